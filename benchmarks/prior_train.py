"""Prior (stage 2) training throughput through its task, i.e. with the engine the preset uses
(DeepSpeed ZeRO-2 by default; ``prior.engine=torch`` for plain PyTorch), AdamW, clipping and the
schedule, on an in-memory batch of random codes. Prints one JSON line last with ``tokens_per_s``
and ``img_per_s`` (sequences per second). For the model alone with MFU, see ``prior_step.py``.

    python benchmarks/prior_train.py experiment=mnist_transformer batch=64 iters=20 device=cpu
    python benchmarks/prior_train.py experiment=imagenet256_gpt_b batch=32 device=cuda precision=bf16
"""

from __future__ import annotations

from task_step import main

if __name__ == "__main__":
    main(default_experiment="mnist_transformer", bench="prior_train")

"""Full BigGAN training iterations as the preset trains them (D steps + G step + EMA, with the
preset's accumulation unless overridden), after warm-up; prints one JSON line last with
``img_per_s`` (real images consumed per second), ``sec_per_iter`` and ``peak_mem_gib``.

    python benchmarks/biggan_step.py experiment=cifar10_biggan batch=50 iters=10 device=cpu precision=fp32
    python benchmarks/biggan_step.py experiment=imagenet128_biggan batch=256 device=cuda precision=bf16 \\
        channels_last=true compile=true trainer.accumulation=1
"""

from __future__ import annotations

from task_step import main

if __name__ == "__main__":
    main(default_experiment="cifar10_biggan", bench="biggan_step")

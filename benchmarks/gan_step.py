"""Throughput of one GAN training step (k D steps + G step + EMA) as the preset trains it, on
in-memory batches so the input pipeline is not measured. Prints one JSON line last.

    python benchmarks/gan_step.py experiment=mnist_dcgan batch=64 iters=50 device=cpu precision=no
        [channels_last=true] [compile=true] [model.g_width=16 ...]   (dotted keys: config overrides)
"""

from __future__ import annotations

from task_step import main

if __name__ == "__main__":
    main(default_experiment="mnist_dcgan", bench="gan_step")

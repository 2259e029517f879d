"""Tokenizer (stage 1) training throughput: one autoencoder step with its reconstruction, LPIPS
(when the preset uses it), codebook and adaptive-weight PatchGAN terms, plus the discriminator
step, on an in-memory batch. ``step_with_gan`` (default on) starts the GAN term at step 1 so its
cost is included. Prints one JSON line last with ``img_per_s``.

    python benchmarks/tokenizer_step.py experiment=mnist_vqgan batch=32 iters=20 device=cpu
    python benchmarks/tokenizer_step.py experiment=imagenet256_vqgan_f16 batch=8 device=cuda precision=bf16
"""

from __future__ import annotations

import sys

from task_step import main

if __name__ == "__main__":
    if not any(a.startswith("vq.disc_start=") for a in sys.argv[1:]):
        sys.argv.append("vq.disc_start=0")  # measure the full step, GAN term included
    main(default_experiment="mnist_vqgan", bench="tokenizer_step")

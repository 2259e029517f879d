"""Parity of bigtrain's models, losses and updates with the reference implementations' own code.

    python benchmarks/reference_parity.py family=biggan ref=/path/to/BigGAN-PyTorch
    python benchmarks/reference_parity.py family=biggan_deep ref=/path/to/BigGAN-PyTorch
    python benchmarks/reference_parity.py family=taming_vqgan ref=/path/to/taming-transformers
    python benchmarks/reference_parity.py family=llamagen_gpt ref=/path/to/LlamaGen
    python benchmarks/reference_parity.py family=progan ref=/path/to/progressive_growing_of_gans
    python benchmarks/reference_parity.py family=pix2pix ref=/path/to/pytorch-CycleGAN-and-pix2pix
    python benchmarks/reference_parity.py family=cyclegan ref=/path/to/pytorch-CycleGAN-and-pix2pix

``ref`` is a checkout of the reference repository; its modules are imported from there (put on
``sys.path``), never copied into bigtrain. Each family builds both implementations at small
settings, copies every reference tensor into bigtrain's modules by name, runs the same inputs and
prints one JSON line last::

    {"family": ..., "params_ours": N, "params_ref": N, "max_abs_diff": x, "loss_abs_diff": y,
     "grad_max_abs_diff": z, ...details}

``max_abs_diff``: the largest output difference (images, logits, codes); ``loss_abs_diff``: the
training loss; ``grad_max_abs_diff``: the largest difference of any parameter's gradient of that
loss. 0.0 means bit-identical. What each family compares is in its module (``benchmarks/parity/``).
"""

from __future__ import annotations

import importlib
import sys

from _common import emit, parse_args

FAMILIES = {
    "biggan": "ajbrock/BigGAN-PyTorch",
    "biggan_deep": "ajbrock/BigGAN-PyTorch",
    "taming_vqgan": "CompVis/taming-transformers",
    "llamagen_gpt": "FoundationVision/LlamaGen",
    "progan": "tkarras/progressive_growing_of_gans",
    "pix2pix": "junyanz/pytorch-CycleGAN-and-pix2pix",
    "cyclegan": "junyanz/pytorch-CycleGAN-and-pix2pix",
}
MODULES = {"biggan_deep": "biggan", "cyclegan": "pix2pix"}  # families that share a module


def main() -> None:
    args = parse_args({"family": "biggan", "ref": ""})
    family = args["family"]
    if family not in FAMILIES:
        raise SystemExit(f"unknown family={family}; choose one of {', '.join(FAMILIES)}")
    if not args["ref"]:
        raise SystemExit(f"pass ref=PATH, a checkout of {FAMILIES[family]}")
    sys.path.insert(0, str(args["ref"]))
    module = importlib.import_module(f"parity.{MODULES.get(family, family)}")
    result = module.run(family, str(args["ref"]))
    emit({"family": family, **result})


if __name__ == "__main__":
    main()

"""``python -m bigtrain ...`` (what torchrun and accelerate launch run)."""

from bigtrain.cli.main import entry

entry()

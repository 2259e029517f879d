"""``python -m bigtrain ...`` (what torchrun and accelerate launch run)."""

import sys

from bigtrain.cli.main import main

sys.exit(main())

"""``bigtrain convert FORMAT SRC OUT [OVERRIDES] [--tokenizer CKPT]``:
a released model of a reference project as a bigtrain run folder ``OUT`` with one checkpoint
(``OUT/checkpoints/step-N``, N the reference's iteration count when it records one), which
``bigtrain sample``, ``evaluate``, ``export``, ``bigtrain.load`` and ``init_from.path=OUT`` take.

OVERRIDES are ``bigtrain train``'s (Hydra), naming the preset whose networks match the released
ones (each format has a default); the data shape comes from ``data.path``'s dataset.json when it
exists, else from the preset's ``data.resolution`` / ``data.channels`` / ``data.num_classes``."""

from __future__ import annotations

import argparse
import json

from bigtrain.convert import convert, formats


def main(argv: list[str]) -> int:
    known = formats()
    listing = "\n".join(f"  {f.name}: {f.help}" for f in known.values())
    p = argparse.ArgumentParser(
        prog="bigtrain convert",
        description=__doc__,
        epilog=f"formats:\n{listing}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("format", help=f"one of: {', '.join(known)}")
    p.add_argument("src", help="the reference's checkpoint file or folder")
    p.add_argument("out", help="a new run folder for the converted checkpoint")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="bigtrain train overrides (a preset)")
    p.add_argument(
        "--tokenizer", default=None, help="a prior's converted tokenizer checkpoint (llamagen-gpt)"
    )
    a = p.parse_args(argv)
    shape = {"tokenizer": a.tokenizer}
    ck = convert(a.format, a.src, a.out, a.overrides, shape)
    meta = json.loads((ck / "meta.json").read_text())
    print(json.dumps({"checkpoint": str(ck), "format": a.format, "step": meta["step"],
                      "components": meta["converted_from"]["components"]}))  # fmt: skip
    return 0

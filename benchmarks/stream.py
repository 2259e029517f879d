"""Input pipeline throughput: bigtrain's WebDataset stream vs a torchvision ImageFolder DataLoader
reading the same images as PNG files, same batch size and workers. Prints one JSON line last.

    python benchmarks/stream.py [data=PATH] batch=64 workers=2 batches=300
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import webdataset as wds
from _common import emit, parse_args
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from bigtrain.data.manifest import DatasetManifest
from bigtrain.data.prepare import PrepareOptions, prepare
from bigtrain.data.stream import DataStream, StreamSpec


def export_folder(m: DatasetManifest, out: Path) -> int:
    """The shards' images as OUT/<class>/<key>.png, for ImageFolder."""
    n = 0
    for sample in wds.tarfile_samples([{"url": p} for p in m.shard_paths("train")]):
        cls = int(sample["cls"])
        d = out / m.classes[cls]
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{sample['__key__']}.png").write_bytes(sample["png"])
        n += 1
    return n


def time_batches(it, batches: int, batch: int, warmup: int = 5) -> float:  # noqa: ANN001
    for _ in range(warmup):
        next(it)
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - t)


def main() -> None:
    a = parse_args({"data": "", "batch": 64, "workers": 2, "batches": 300})
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a["data"]) if a["data"] else Path(tmp) / "mnist5k"
        if not a["data"]:
            prepare(
                "builtin:mnist5k", root, PrepareOptions(resolution=32, samples_per_shard=500, progress=False)
            )
        m = DatasetManifest.load(root)
        spec = StreamSpec(
            tuple(m.shard_paths("train")),
            a["batch"],
            m.resolution,
            m.channels,
            num_workers=a["workers"],
            shuffle_buffer=1000,
        )
        wds_rate = time_batches(iter(DataStream(spec)), a["batches"], a["batch"])

        folder = Path(tmp) / "folder"
        n = export_folder(m, folder)
        mode = "L" if m.channels == 1 else "RGB"
        tf = transforms.Compose(
            [transforms.ToTensor(), transforms.Normalize([0.5] * m.channels, [0.5] * m.channels)]
        )
        ds = datasets.ImageFolder(str(folder), transform=tf, loader=lambda p: Image.open(p).convert(mode))
        loader = DataLoader(
            ds,
            batch_size=a["batch"],
            shuffle=True,
            num_workers=a["workers"],
            drop_last=True,
            persistent_workers=a["workers"] > 0,
        )

        def forever():  # noqa: ANN202
            while True:
                yield from loader

        folder_rate = time_batches(forever(), a["batches"], a["batch"])
    emit(
        {
            "bench": "stream",
            "images": n,
            "resolution": m.resolution,
            "batch": a["batch"],
            "workers": a["workers"],
            "wds_img_per_s": round(wds_rate, 1),
            "imagefolder_img_per_s": round(folder_rate, 1),
            "ratio": round(wds_rate / folder_rate, 3),
        }
    )


if __name__ == "__main__":
    main()

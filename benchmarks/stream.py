"""Input pipeline throughput, side by side at equal batch size and workers:

* ``bigtrain``: bigtrain's resumable WebDataset stream (``bigtrain.data.stream``);
* ``imagefolder``: torchvision ``ImageFolder`` + ``DataLoader`` over the same images as files, with the
  usual ``Resize`` + ``CenterCrop`` + ``ToTensor`` + ``Normalize``;
* ``webdataset``: a plain webdataset pipeline over the same shards (``decode("pil")``, the same
  torchvision transforms, batched by the DataLoader).

Two sources: ``source=png32``, the 4,500 built-in digits as 32 px PNG (what ``bigtrain prepare``
writes), and ``source=jpeg``, ImageNet-like photos: ``images`` random crops (sides 300 to 500 px, as
ImageNet's are) of scikit-image's colour photos, stored as JPEG q95 in img2dataset's layout, read at
``res`` px. Prints one JSON line last.

    python benchmarks/stream.py source=jpeg res=128 workers=1,2 batch=64 batches=60
"""

from __future__ import annotations

import io
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from _common import emit, parse_args
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from bigtrain.data.index import IndexOptions, index
from bigtrain.data.manifest import DatasetManifest
from bigtrain.data.prepare import PrepareOptions, prepare
from bigtrain.data.read import read_shards
from bigtrain.data.stream import DataStream, StreamSpec


def jpeg_shards(out: Path, n: int, per_shard: int = 250, seed: int = 0) -> None:
    """``n`` JPEG q95 photos of 300-500 px sides, with a ``.cls`` of the photo they came from."""
    from skimage import data, transform

    photos = [data.chelsea(), data.coffee(), data.rocket(), data.astronaut()]
    photos = [(transform.rescale(p, 1.6, channel_axis=2) * 255).astype(np.uint8) for p in photos]
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    for s in range(0, n, per_shard):
        with wds.TarWriter(str(out / f"{s // per_shard:05d}.tar"), mtime=0) as sink:
            for i in range(s, min(n, s + per_shard)):
                c = int(rng.integers(len(photos)))
                h, w = photos[c].shape[:2]
                ch, cw = int(rng.integers(300, min(h, 500))), int(rng.integers(300, min(w, 500)))
                y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
                buf = io.BytesIO()
                img = Image.fromarray(photos[c][y : y + ch, x : x + cw])
                (img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if i % 2 else img).save(
                    buf, "JPEG", quality=95
                )
                meta = {"key": f"{i:09d}", "width": cw, "height": ch}
                sink.write(
                    {
                        "__key__": f"{i:09d}",
                        "jpg": buf.getvalue(),
                        "cls": str(c).encode(),
                        "json": json.dumps(meta).encode(),
                    }
                )


def export_folder(m: DatasetManifest, out: Path) -> int:
    """The shards' images as OUT/<class>/<key>.<ext>, for ImageFolder."""
    n = 0
    for sample in read_shards(m.shard_paths("train")):
        ext = next(k for k in ("png", "jpg") if k in sample)
        d = out / m.classes[int(sample["cls"])]
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{sample['__key__']}.{ext}").write_bytes(sample[ext])
        n += 1
    return n


def time_batches(it: Iterator[object], batches: int, batch: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        next(it)
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - t)


def forever(loader: DataLoader) -> Iterator[object]:
    while True:
        yield from loader


def on_device(batches: Iterator[object], device: torch.device) -> Iterator[object]:
    """Each batch's images on ``device`` as floats, the copy finished: what a training step gets."""
    for b in batches:
        x = b["image"] if isinstance(b, dict) else b[0]  # type: ignore[index]
        x = x.to(device, non_blocking=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        yield x


def main() -> None:
    a = parse_args(
        {
            "source": "png32",
            "res": 128,
            "images": 1000,
            "batch": 64,
            "workers": "1,2",
            "batches": 60,
            "resample": "lanczos,bicubic,bilinear",
            "decode": "cpu",  # "cpu,gpu": also time data.decode=gpu (bilinear/bicubic only)
            "device": "cpu",  # cuda: batches end on the GPU (pinned uint8 copies, or GPU decoding)
            "baselines": True,  # also time ImageFolder and plain webdataset
        }
    )
    device = torch.device(a["device"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if a["source"] == "png32":
            prepare(
                "builtin:mnist5k",
                root / "ds",
                PrepareOptions(resolution=32, samples_per_shard=500, progress=False),
            )
            res = 32
        else:
            jpeg_shards(root / "shards", a["images"])
            index(str(root / "shards"), root / "ds", IndexOptions(resolution=a["res"], progress=False))
            res = a["res"]
        m = DatasetManifest.load(root / "ds")
        n = export_folder(m, root / "folder")
        mode = "L" if m.channels == 1 else "RGB"
        norm = transforms.Normalize([0.5] * m.channels, [0.5] * m.channels)
        tf = transforms.Compose(
            [transforms.Resize(res), transforms.CenterCrop(res), transforms.ToTensor(), norm]
        )
        for workers in [int(w) for w in str(a["workers"]).split(",")]:
            ours = {}
            for dec in str(a["decode"]).split(","):
                for flt in str(a["resample"]).split(","):
                    if dec == "gpu" and flt == "lanczos":
                        continue  # torch has no Lanczos filter
                    spec = StreamSpec(
                        tuple(m.shard_paths("train")),
                        a["batch"],
                        res,
                        m.channels,
                        num_workers=workers,
                        shuffle_buffer=1000,
                        downsample=flt,
                        decode=dec,
                    )
                    name = flt if dec == "cpu" else f"gpu_{flt}"
                    ours[name] = time_batches(
                        on_device(DataStream(spec, device), device), a["batches"], a["batch"]
                    )
            if not a["baselines"]:
                rows.append(
                    {"workers": workers, **{f"bigtrain_{k}_img_per_s": round(v, 1) for k, v in ours.items()}}
                )
                print(json.dumps(rows[-1]), flush=True)
                continue
            folder = datasets.ImageFolder(
                str(root / "folder"), transform=tf, loader=lambda p: Image.open(p).convert(mode)
            )
            kw = dict(
                batch_size=a["batch"], num_workers=workers, persistent_workers=workers > 0, drop_last=True
            )
            loader = DataLoader(folder, shuffle=True, pin_memory=device.type == "cuda", **kw)
            theirs = time_batches(on_device(forever(loader), device), a["batches"], a["batch"])
            key = "png" if a["source"] == "png32" else "jpg"
            plain = (
                wds.WebDataset(m.shard_paths("train"), shardshuffle=False, empty_check=False)
                .shuffle(1000)
                .decode("pil")
                .to_tuple(key, "cls")
                .map_tuple(lambda im: tf(im.convert(mode)), int)
            )
            loader = DataLoader(plain, pin_memory=device.type == "cuda", **kw)
            wds_rate = time_batches(on_device(forever(loader), device), a["batches"], a["batch"])
            row: dict[str, object] = {"workers": workers}
            for flt, rate in ours.items():
                row[f"bigtrain_{flt}_img_per_s"] = round(rate, 1)
            row["imagefolder_img_per_s"] = round(theirs, 1)
            row["webdataset_img_per_s"] = round(wds_rate, 1)
            for flt, rate in ours.items():
                row[f"{flt}_vs_imagefolder"] = round(rate / theirs, 2)
                row[f"{flt}_vs_webdataset"] = round(rate / wds_rate, 2)
            rows.append(row)
            print(json.dumps(rows[-1]), flush=True)
    emit(
        {
            "bench": "stream",
            "source": a["source"],
            "images": n,
            "resolution": res,
            "batch": a["batch"],
            "rows": rows,
        }
    )


if __name__ == "__main__":
    main()

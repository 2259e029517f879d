"""The stream over paired samples: source and target cropped and flipped alike (pixel-aligned),
exact resume, corrupt parts skipped and counted, and every one-image reader taking the target."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from bigtrain.data.images import decode
from bigtrain.data.index import IndexOptions, index
from bigtrain.data.manifest import DatasetManifest
from bigtrain.data.prepare import Pairs, PrepareOptions, prepare
from bigtrain.data.read import iter_images
from bigtrain.data.stream import DataStream, StreamSpec, _ShardStream


def _pairs(root: Path, invert: bool, n: int = 24) -> Path:
    """``n`` noise images of 20x30 (portrait and landscape) in 2 classes, prepared with ``--resize
    shorter`` at 20 px, so the stream's 16 px random crops have room to move; each source is its
    target (or the target inverted)."""
    rng = np.random.default_rng(1)
    src, tgt = root / "src", root / "tgt"
    for i in range(n):
        shape = (20, 30, 3) if i % 2 else (30, 20, 3)
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        for folder, arr in ((tgt, img), (src, 255 - img if invert else img)):
            (folder / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(folder / f"c{i % 2}" / f"im{i:02d}.png")
    out = root / ("inverted" if invert else "same")
    opts = PrepareOptions(
        resolution=20, resize="shorter", samples_per_shard=5, val_fraction=0.25, progress=False
    )
    prepare(Pairs(str(src), str(tgt)), out, opts)
    return out


def _spec(data: Path, **kw: object) -> StreamSpec:
    m = DatasetManifest.load(data)
    base: dict[str, object] = dict(
        batch_size=4,
        resolution=16,
        channels=3,
        seed=5,
        shuffle_buffer=8,
        flip=True,
        resize="random",
        layout="pairs",
    )
    base.update(kw)
    return StreamSpec(tuple(m.shard_paths("train")), **base)  # type: ignore[arg-type]


def test_identical_parts_stay_identical_under_random_crops_and_flips(tmp_path: Path) -> None:
    data = _pairs(tmp_path, invert=False)
    stream = DataStream(_spec(data))
    centre = DataStream(_spec(data, resize="center", flip=False))
    moved, labels = 0, set()
    for _ in range(12):  # 18 train pairs: two epochs and more
        batch, plain = next(stream), next(centre)
        assert batch["image"].shape == batch["source"].shape == (4, 3, 16, 16)
        assert batch["source"].dtype == torch.float32 and batch["source"].min() >= -1.0
        assert torch.equal(batch["source"], batch["image"])
        assert batch["keys"] == plain["keys"]  # the same samples, cropped and flipped differently
        moved += int(not torch.equal(batch["image"], plain["image"]))
        labels.update(batch["label"].tolist())
    assert moved >= 10 and labels == {0, 1}


def test_a_source_unlike_its_target_gets_the_same_crop_and_flip(tmp_path: Path) -> None:
    data = _pairs(tmp_path, invert=True)
    stream = DataStream(_spec(data))
    for _ in range(6):
        batch = next(stream)
        # 255 - x resampled is 255 - (x resampled), up to rounding: source = -image in [-1, 1]
        assert (batch["source"] + batch["image"]).abs().max() <= 2.5 / 127.5
        assert batch["image"].std() > 0.3  # noise, so a misaligned crop or flip could not pass


def test_uint8_batches_carry_both_parts(tmp_path: Path) -> None:
    data = _pairs(tmp_path, invert=False)
    batch = next(iter(_ShardStream(_spec(data), {}, 0, uint8=True)))
    assert batch["image"].dtype == batch["source"].dtype == torch.uint8
    assert batch["source"].is_contiguous() and torch.equal(batch["source"], batch["image"])
    floats = next(DataStream(_spec(data)))
    assert torch.equal(batch["image"].float().div(127.5).sub(1.0), floats["image"])


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_of_a_pairs_stream_is_exact(tmp_path: Path, workers: int) -> None:
    data = _pairs(tmp_path, invert=True)
    spec = _spec(data, num_workers=workers, batch_size=3)
    full = [next(s) for s in [DataStream(spec)] for _ in range(14)]
    first = DataStream(spec)
    head = [next(first) for _ in range(5)]
    resumed = DataStream(spec)
    resumed.load_state_dict(first.state_dict())
    tail = [next(resumed) for _ in range(9)]
    for a, b in zip(full, head + tail, strict=True):
        assert a["keys"] == b["keys"]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["source"], b["source"])


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (16, 16), value).save(buf, format="PNG")
    return buf.getvalue()


def test_a_corrupt_or_missing_part_skips_its_sample(tmp_path: Path) -> None:
    shard = tmp_path / "pairs-000000.tar"
    with wds.TarWriter(str(shard), mtime=0.0) as w:
        for i in range(8):
            sample: dict[str, object] = {"__key__": f"{i:04d}", "cls": b"0", "tgt.png": _png(10 * i)}
            if i != 5:
                sample["src.png"] = b"not a png" if i == 2 else _png(255 - 10 * i)
            w.write(sample)
    spec = StreamSpec(
        (str(shard),), batch_size=3, resolution=16, channels=1, layout="pairs", shuffle_buffer=1
    )
    stream = DataStream(spec)
    batches = [next(stream) for _ in range(2)]
    keys = [k.rsplit(":", 1)[1] for b in batches for k in b["keys"]]
    assert keys == ["0000", "0001", "0003", "0004", "0006", "0007"]
    assert stream.state.skipped == 2
    for b in batches:
        assert torch.allclose(b["source"], -b["image"], atol=1e-6)  # 255 - v and v


def test_gpu_decoding_and_domain_layouts_are_refused_at_build(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"^data.decode=gpu does not support paired samples yet; use data.decode=cpu$"
    ):
        StreamSpec(("x.tar",), batch_size=2, resolution=16, channels=3, layout="pairs", decode="gpu")
    with pytest.raises(ValueError, match="one domain at a time"):
        StreamSpec(("x.tar",), batch_size=2, resolution=16, channels=3, layout="domains")


def test_one_image_readers_take_the_target(tmp_path: Path) -> None:
    data = _pairs(tmp_path, invert=True)
    m = DatasetManifest.load(data)
    plain = next(DataStream(_spec(data, layout="images")))
    paired = next(DataStream(_spec(data)))
    assert "source" not in plain and torch.equal(plain["image"], paired["image"])
    # FID references of the val split are its targets
    refs = np.concatenate(list(iter_images(m, "val", batch_size=4, resolution=16)))
    samples = list(wds.tarfile_samples([{"url": u} for u in m.shard_paths("val")]))
    targets = np.stack([decode(s["tgt.png"], 3, 16) for s in samples])
    assert refs.shape == (6, 16, 16, 3) and np.array_equal(refs, targets)
    assert not np.array_equal(refs, np.stack([decode(s["src.png"], 3, 16) for s in samples]))
    scanned = index(str(data / "*.tar"), tmp_path / "indexed", IndexOptions(resolution=16, progress=False))
    assert scanned.count("train") + scanned.count("val") == 24 and scanned.extra["image_formats"] == {
        "png": 24
    }

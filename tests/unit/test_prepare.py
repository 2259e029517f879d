"""`bigtrain prepare`: shard layout, manifest, determinism, folder input, bad input."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from bigtrain.data.manifest import DatasetError, DatasetManifest
from bigtrain.data.prepare import PrepareOptions, prepare
from bigtrain.data.read import iter_images


def test_builtin_mnist_manifest_and_checksums(mnist_shards: Path) -> None:
    raw = json.loads((mnist_shards / "dataset.json").read_text())
    assert raw["resolution"] == 32 and raw["channels"] == 1 and raw["num_classes"] == 10
    assert raw["splits"]["train"]["count"] == 4500 and raw["splits"]["val"]["count"] == 500
    assert [s["file"] for s in raw["splits"]["train"]["shards"]] == [f"train-{i:06d}.tar" for i in range(9)]
    for split in raw["splits"].values():
        for s in split["shards"]:
            assert hashlib.sha256((mnist_shards / s["file"]).read_bytes()).hexdigest() == s["sha256"]


def test_shards_are_plain_tars_that_stock_webdataset_reads(mnist_shards: Path) -> None:
    names = subprocess.run(
        ["tar", "-tf", str(mnist_shards / "val-000000.tar")], capture_output=True, text=True, check=True
    ).stdout.split()
    # 500 samples, each a PNG and its label, in key order (the label sorts first)
    assert len(names) == 1000 and all(n.endswith((".cls", ".png")) for n in names)
    assert {n.rsplit(".", 1)[0] for n in names[0::2]} == {n.rsplit(".", 1)[0] for n in names[1::2]}
    assert names[0].endswith(".cls") and names[1].endswith(".png")
    ds = (
        wds.WebDataset(str(mnist_shards / "val-000000.tar"), shardshuffle=False)
        .decode("pil")
        .to_tuple("png", "cls")
    )
    img, label = next(iter(ds))
    assert img.size == (32, 32) and int(label) in range(10)


@pytest.mark.slow  # seconds: trains, spawns a process or reads weights
def test_preparing_twice_gives_identical_shards(tmp_path: Path, mnist_shards: Path) -> None:
    m = prepare(
        "builtin:mnist5k", tmp_path, PrepareOptions(resolution=32, samples_per_shard=500, progress=False)
    )
    assert m.dataset_id == DatasetManifest.load(mnist_shards).dataset_id


def test_val_and_train_are_disjoint_and_images_decode(mnist_shards: Path) -> None:
    m = DatasetManifest.load(mnist_shards)
    train_keys = {s["__key__"] for s in wds.tarfile_samples([{"url": p} for p in m.shard_paths("train")])}
    val_keys = {s["__key__"] for s in wds.tarfile_samples([{"url": p} for p in m.shard_paths("val")])}
    assert len(train_keys) == 4500 and len(val_keys) == 500 and not train_keys & val_keys
    batch = next(iter_images(m, "val", 50))
    assert batch.shape == (50, 32, 32, 1) and batch.dtype == np.uint8 and batch.max() > 200


def test_image_folder_with_classes_resizes_and_skips_corrupt_files(tmp_path: Path) -> None:
    from skimage import data as skdata

    src = tmp_path / "src"
    photos = {"cat": [skdata.chelsea(), skdata.coffee()], "astro": [skdata.astronaut(), skdata.rocket()]}
    for cls, imgs in photos.items():
        (src / cls).mkdir(parents=True)
        for i, arr in enumerate(imgs):
            Image.fromarray(arr).save(src / cls / f"{i}.jpg")
    (src / "cat" / "broken.png").write_bytes(b"not an image at all")
    m = prepare(
        str(src),
        tmp_path / "out",
        PrepareOptions(resolution=48, val_fraction=0.0, samples_per_shard=2, progress=False),
    )
    assert m.classes == ["astro", "cat"] and m.channels == 3 and m.resolution == 48
    assert m.count("train") == 4 and m.extra["skipped"] == 1
    # 5 files planned into shards of 2, 2, 1: the broken file's shard is one smaller, none shifts
    assert sorted(s.count for s in m.splits["train"]) == [1, 1, 2] and len(m.splits["train"]) == 3
    imgs = np.concatenate(list(iter_images(m, "train", 8)))
    assert imgs.shape == (4, 48, 48, 3)


def test_missing_inputs_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="source folder not found"):
        prepare(str(tmp_path / "nope"), tmp_path / "out", PrepareOptions(resolution=32))
    with pytest.raises(DatasetError, match=r"no dataset.json in .*bigtrain prepare"):
        DatasetManifest.load(tmp_path)
    with pytest.raises(ValueError, match="unknown built-in dataset 'cifar'"):
        prepare("builtin:cifar", tmp_path / "out", PrepareOptions())


def test_missing_shard_is_named(tmp_path: Path, mnist_shards: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(mnist_shards, copy)
    (copy / "train-000003.tar").unlink()
    with pytest.raises(DatasetError) as err:
        DatasetManifest.load(copy).shard_paths("train")
    assert (
        "shard missing" in str(err.value)
        and "train-000003.tar" in str(err.value)
        and "\n" not in str(err.value)
    )

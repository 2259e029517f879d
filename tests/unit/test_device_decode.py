"""``data.decode=gpu``: JPEGs decoded and resized by torch on the training device. The same code
runs on the CPU here (torchvision's libjpeg-turbo instead of nvJPEG), so its pixels, its sample
order and its resume are checked without a GPU."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bigtrain.data.index import IndexOptions, index
from bigtrain.data.manifest import DatasetManifest
from bigtrain.data.stream import DataStream, StreamSpec
from tests.conftest import compose
from tests.servers import write_img2dataset_shards


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> DatasetManifest:
    root = tmp_path_factory.mktemp("photos")
    write_img2dataset_shards(root / "shards", shards=2, per_shard=16)
    return index(
        str(root / "shards"), root / "ds", IndexOptions(resolution=16, label_key="json:label", progress=False)
    )


def _spec(m: DatasetManifest, **kw: object) -> StreamSpec:
    base: dict[str, object] = dict(
        batch_size=16,
        resolution=m.resolution,
        channels=m.channels,
        shuffle_buffer=8,
        label_key=m.label_key,
        classes=tuple(m.classes),
        flip=True,
        downsample="bilinear",
    )
    base.update(kw)
    return StreamSpec(tuple(m.shard_paths("train")), **base)  # type: ignore[arg-type]


@pytest.mark.parametrize("resize", ["center", "random", "pad"])
@pytest.mark.parametrize("flt", ["bilinear", "bicubic"])
def test_device_decoding_matches_the_cpu_path_closely(photos: DatasetManifest, resize: str, flt: str) -> None:
    cpu = next(DataStream(_spec(photos, resize=resize, downsample=flt)))
    dev = next(DataStream(_spec(photos, resize=resize, downsample=flt, decode="gpu"), torch.device("cpu")))
    assert dev["keys"] == cpu["keys"] and torch.equal(dev["label"], cpu["label"])  # the same samples
    assert dev["image"].shape == cpu["image"].shape == (16, 3, 16, 16) and dev["image"].dtype == torch.float32
    # the same images up to the decoders and filters: in 0..255 levels. Most of it is JPEG draft mode on
    # the CPU (a DCT-domain halving; 3.3 of the mean difference here, 0.27 without it)
    diff = (dev["image"] - cpu["image"]).abs() * 127.5
    assert diff.mean() < 6.0, float(diff.mean())


def test_device_decoding_resumes_exactly(photos: DatasetManifest) -> None:
    spec = _spec(photos, resize="random", decode="gpu", num_workers=2)
    stream = DataStream(spec, torch.device("cpu"))
    next(stream)
    state = stream.state_dict()
    expected = [next(stream) for _ in range(3)]
    again = DataStream(replace(spec), torch.device("cpu"))
    again.load_state_dict(state)
    for want in expected:
        got = next(again)
        assert got["keys"] == want["keys"] and torch.equal(got["image"], want["image"])


def test_device_decoding_needs_a_torch_filter(tmp_path: Path) -> None:
    from bigtrain.config.validate import common_problems

    (problem,) = [
        p for p in common_problems(compose("experiment=mnist_dcgan", "data.decode=gpu")) if "decode" in p
    ]
    assert "set data.resample=bilinear or bicubic (got lanczos)" in problem
    assert not [
        p
        for p in common_problems(
            compose("experiment=mnist_dcgan", "data.decode=gpu", "data.resample=bicubic")
        )
        if "decode" in p
    ]

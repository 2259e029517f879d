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
from tests.servers import stream_spec, write_img2dataset_shards


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> DatasetManifest:
    root = tmp_path_factory.mktemp("photos")
    write_img2dataset_shards(root / "shards", shards=2, per_shard=16)
    return index(
        str(root / "shards"), root / "ds", IndexOptions(resolution=16, label_key="json:label", progress=False)
    )


def _spec(m: DatasetManifest, **kw: object) -> StreamSpec:
    return stream_spec(
        m, **{"batch_size": 16, "shuffle_buffer": 8, "flip": True, "downsample": "bilinear", **kw}
    )


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


def test_jpegs_the_device_cannot_take_go_through_the_cpu(tmp_path: Path) -> None:
    """EXIF-rotated and CMYK JPEGs are decoded on the CPU (nvJPEG ignores orientation, lacks CMYK);
    a truncated one is skipped and counted there, as with data.decode=cpu, instead of failing a batch."""
    import io

    import numpy as np
    import webdataset as wds
    from PIL import Image

    from bigtrain.data.device_decode import device_ready

    rng = np.random.default_rng(0)
    plain = Image.fromarray(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8))

    def jpeg(img: Image.Image, **kw: object) -> bytes:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=95, **kw)
        return buf.getvalue()

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    samples = {
        "a": jpeg(plain)[:300],
        "b": jpeg(plain),
        "c": jpeg(plain, exif=exif.tobytes()),
        "d": jpeg(plain.convert("CMYK")),
    }
    assert [device_ready(v) for v in samples.values()] == [False, True, False, False]
    shard = tmp_path / "x.tar"
    with wds.TarWriter(str(shard), mtime=0) as sink:
        for key, data in samples.items():
            sink.write({"__key__": key, "jpg": data})
    spec = StreamSpec(
        (str(shard),), 3, 16, 3, shuffle_buffer=1, label_key=None, downsample="bilinear", decode="gpu"
    )
    stream = DataStream(spec, torch.device("cpu"))
    batch = next(stream)
    assert batch["keys"] == ["x.tar:b", "x.tar:c", "x.tar:d"] and stream.state.skipped == 1
    cpu = next(DataStream(replace(spec, decode="cpu")))["image"]
    assert ((batch["image"] - cpu).abs().mean(dim=(1, 2, 3)) * 127.5 < 6).all()  # c is upright in both

"""Foreign shards read where they are: shard lists and URLs, `bigtrain index`, the stream over
img2dataset-style samples (jpg + json + txt), and remote reads that fail and are retried."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bigtrain.data.index import IndexOptions, index
from bigtrain.data.manifest import DatasetManifest
from bigtrain.data.read import ReadPolicy, ShardReadError, read_shards, shard_samples
from bigtrain.data.stream import DataStream
from bigtrain.data.urls import expand
from bigtrain.errors import DatasetError
from tests.servers import CLASSES, http_server, stream_spec, write_img2dataset_shards


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("foreign")
    write_img2dataset_shards(root, shards=4, per_shard=12)
    return root


_spec = stream_spec


def test_shard_lists_expand_like_webdataset(foreign: Path) -> None:
    every = [str(foreign / f"{i:05d}.tar") for i in range(4)]
    assert expand(str(foreign)) == every
    assert expand(f"{foreign}/{{00000..00002}}.tar") == every[:3]
    assert expand(f"{foreign}/0000[13].tar :: http://h/a-{{0..1}}.tar") == [
        every[1],
        every[3],
        "http://h/a-0.tar",
        "http://h/a-1.tar",
    ]
    assert expand(["pipe:cat {a,b}.tar"]) == ["pipe:cat {a,b}.tar"]  # the shell's braces
    with pytest.raises(DatasetError, match="no shards match"):
        expand(f"{foreign}/nothing-*.tar")


def test_index_describes_img2dataset_shards_in_place(foreign: Path, tmp_path: Path) -> None:
    m = index(
        str(foreign),
        tmp_path / "ds",
        IndexOptions(resolution=16, label_key="json:label", val_fraction=0.25, progress=False),
    )
    again = DatasetManifest.load(tmp_path / "ds")
    assert again.to_json() == m.to_json()
    assert m.classes == sorted(CLASSES) and m.label_key == "json:label"
    assert m.has_text and m.has_meta and m.channels == 3 and m.resolution == 16
    assert m.count("train") == 36 and m.count("val") == 12
    shard = m.splits["train"][0]
    assert Path(shard.file).is_absolute() and shard.ext == "jpg" and len(shard.sha256) == 64
    assert shard.bytes == Path(shard.file).stat().st_size
    raw = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert sum(raw["label_counts"].values()) == 48 and raw["image_formats"] == {"jpg": 48}
    lo, hi = raw["image_sizes"]["min"], raw["image_sizes"]["max"]
    assert lo[0] < hi[0] and lo[1] < hi[1]  # sizes vary: the stream resizes them
    # no copy was made: the manifest's folder holds only the manifest
    assert [p.name for p in (tmp_path / "ds").iterdir()] == ["dataset.json"]


def test_index_needs_a_resolution_for_mixed_sizes(foreign: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not all one square size .* give --resolution"):
        index(str(foreign), tmp_path / "ds", IndexOptions(progress=False))


@pytest.mark.parametrize("resize", ["center", "random", "pad"])
def test_stream_gives_images_labels_captions_and_metadata(foreign: Path, tmp_path: Path, resize: str) -> None:
    m = index(
        str(foreign), tmp_path / "ds", IndexOptions(resolution=16, label_key="json:label", progress=False)
    )
    batch = next(DataStream(_spec(m, resize=resize)))
    assert batch["image"].shape == (8, 3, 16, 16)
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    for label, text, meta in zip(batch["label"].tolist(), batch["text"], batch["meta"], strict=True):
        assert m.classes[label] == meta["label"] and text == meta["caption"]
    if resize == "pad":  # the bars are black: a whole row or column of -1 on the shorter side
        img = batch["image"][0]
        assert (img[:, 0, :] == -1).all() or (img[:, :, 0] == -1).all()


def test_random_crops_differ_by_sample_and_repeat_on_resume(foreign: Path, tmp_path: Path) -> None:
    m = index(
        str(foreign), tmp_path / "ds", IndexOptions(resolution=16, label_key="json:label", progress=False)
    )
    centre = next(DataStream(_spec(m)))["image"]
    stream = DataStream(_spec(m, resize="random"))
    first = next(stream)["image"]
    assert not np.allclose(first.numpy(), centre.numpy())
    state = stream.state_dict()
    expected = next(stream)["image"]
    resumed = DataStream(_spec(m, resize="random"))
    resumed.load_state_dict(state)
    assert np.array_equal(next(resumed)["image"].numpy(), expected.numpy())


def test_pipe_shards_are_read_and_a_failing_command_is_an_error(foreign: Path) -> None:
    path = foreign / "00000.tar"
    keys = [s["__key__"] for s in shard_samples(f"pipe:cat {path}")]
    assert keys == [s["__key__"] for s in shard_samples(str(path))] and len(keys) == 12
    with pytest.raises(ShardReadError, match="exited with status 1"):
        list(shard_samples("pipe:cat /nonexistent/x.tar", ReadPolicy(retries=1, backoff_s=0.01)))


def test_a_remote_read_cut_half_way_is_retried_without_repeating_samples(foreign: Path) -> None:
    with http_server(foreign) as (url, handler):
        clean = [s["__key__"] for s in shard_samples(f"{url}/00001.tar")]
        handler.cut["/00001.tar"] = 2  # the next two transfers break half-way
        handler.requests.clear()
        retried = [s["__key__"] for s in shard_samples(f"{url}/00001.tar", ReadPolicy(backoff_s=0.01))]
        assert retried == clean and len(clean) == 12
        assert handler.requests == ["/00001.tar"] * 3


def test_a_shard_that_keeps_failing_is_skipped_then_stops_the_run(foreign: Path, tmp_path: Path) -> None:
    with http_server(foreign) as (url, handler):
        m = index(
            f"{url}/{{00000..00003}}.tar",
            tmp_path / "ds",
            IndexOptions(resolution=16, label_key="json:label", progress=False),
        )
        assert m.splits["train"][0].file == f"{url}/00000.tar" and m.splits["train"][0].sha256 == ""
        handler.gone.add("/00002.tar")
        handler.requests.clear()
        skipped: list[str] = []
        keys = [
            s["__key__"]
            for s in read_shards(
                m.shard_paths("train"), ReadPolicy(retries=2, backoff_s=0.01), lambda e: skipped.append(e.url)
            )
        ]
        assert len(keys) == 36 and skipped == [f"{url}/00002.tar"]
        assert handler.requests.count("/00002.tar") == 3  # the first try and two retries
        stream = DataStream(_spec(m, retries=1, max_shard_errors=0, batch_size=48))
        with pytest.raises(DatasetError, match=rf"max_shard_errors=0 .*{url}/00002.tar: .*503"):
            next(stream)


def test_reference_images_follow_the_streams_filter_and_padding(foreign: Path, tmp_path: Path) -> None:
    """FID references of indexed shards are made as the stream makes its images, and keyed by how:
    statistics computed with one filter are never reused for another."""
    from bigtrain.data.images import recipe
    from bigtrain.data.read import iter_images
    from bigtrain.eval.registry import reference_key

    m = index(
        str(foreign), tmp_path / "ds", IndexOptions(resolution=16, label_key="json:label", progress=False)
    )
    keys = {r: reference_key(m, "train", 100, None, r) for r in ("lanczos", "bicubic", "bicubic:pad")}
    assert len(set(keys.values())) == 3 and keys["bicubic:pad"].endswith("-bicubic-pad")
    assert recipe("bicubic", "random") == "bicubic"  # a random crop's references are centre crops
    for r, flt, policy in (("lanczos", "lanczos", "center"), ("bicubic:pad", "bicubic", "pad")):
        refs = next(iter_images(m, "train", 8, method=r))
        spec = _spec(m, downsample=flt, resize=policy)
        ours = next(DataStream(replace(spec, shards=spec.shards[:1])))["image"]  # read in order
        expected = np.stack([np.asarray(x) for x in refs]).transpose(0, 3, 1, 2) / 127.5 - 1
        assert np.allclose(ours.numpy(), expected, atol=1e-6)  # the same images, in shard order


def test_doctor_checks_remote_shards_with_one_request(foreign: Path, tmp_path: Path) -> None:
    from bigtrain.cli.doctor import check_dataset
    from tests.conftest import compose

    with http_server(foreign) as (url, handler):
        index(f"{url}/{{00000..00003}}.tar", tmp_path / "ds", IndexOptions(resolution=16, progress=False))
        cfg = compose("experiment=mnist_dcgan", f"data.path={tmp_path / 'ds'}")
        handler.requests.clear()
        (ok,) = check_dataset(cfg, verify_checksums=False)
        assert ok.status == "ok" and "4 remote, the first answers" in ok.detail
        assert len(handler.requests) <= 1  # a HEAD is not logged as a GET; at most one request
        handler.gone.add("/00000.tar")
        (bad,) = check_dataset(cfg, verify_checksums=False)
        assert bad.status == "fail" and f"{url}/00000.tar unreachable" in bad.detail


def test_a_shard_that_ends_early_is_a_failed_read(foreign: Path) -> None:
    """tar cannot tell a file cut at a member boundary (or a connection closed early) from its end;
    the manifest's count can."""
    path = str(foreign / "00000.tar")
    assert len(list(shard_samples(path, expected=12))) == 12
    with pytest.raises(ShardReadError, match="ended after 12 of its 13 samples"):
        list(shard_samples(path, expected=13))
    with http_server(foreign) as (url, handler):
        with pytest.raises(ShardReadError, match="ended after 12 of its 13 samples"):
            list(shard_samples(f"{url}/00000.tar", ReadPolicy(retries=1, backoff_s=0.01), expected=13))
        assert handler.requests == ["/00000.tar"] * 2  # a short remote read is retried


def test_resume_after_a_skipped_shard_is_exact_when_the_shard_is_back(foreign: Path, tmp_path: Path) -> None:
    """A shard that failed before the checkpoint and reads fine after it: the resumed epoch still
    leaves it out (as far as it failed then), so the stream continues with the very next sample."""
    import shutil

    data = tmp_path / "shards"
    shutil.copytree(foreign, data)
    gone = data / "00001.tar"
    saved = gone.read_bytes()
    gone.unlink()
    m = index(
        str(foreign), tmp_path / "ds", IndexOptions(resolution=16, label_key="json:label", progress=False)
    )
    spec = replace(_spec(m, batch_size=5), shards=tuple(str(data / Path(s).name) for s in _spec(m).shards))
    stream = DataStream(spec)
    while stream.state.shard_errors == 0:
        next(stream)
    state = stream.state_dict()
    assert state["positions"][0][3] == 1 and state["positions"][0][4] == [[1, 0]]  # shard 1, 0 samples
    expected = [next(stream)["keys"] for _ in range(5)]
    gone.write_bytes(saved)  # back before the resume
    resumed = DataStream(spec)
    resumed.load_state_dict(state)
    assert [next(resumed)["keys"] for _ in range(5)] == expected
    assert resumed.state.shard_errors == stream.state.shard_errors  # not counted twice


def test_storage_options_alone_reach_s3_for_the_stream_and_the_references(
    foreign: Path, tmp_path: Path
) -> None:
    """No AWS_ENDPOINT_URL: the endpoint and keys come only from data.storage_options, for the
    stream's reads and (through configure_reads) for every other read of the run."""
    import os

    from bigtrain.data.read import default_policy, iter_images
    from bigtrain.train.task import configure_reads
    from tests.conftest import compose
    from tests.servers import s3_server

    files = {f"x/{p.name}": p.read_bytes() for p in sorted(foreign.glob("*.tar"))}
    with s3_server("opts", files) as env:
        for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            os.environ.pop(key)
        opts = {"endpoint_url": env["AWS_ENDPOINT_URL"], "key": "testing", "secret": "testing"}
        m = index(
            "s3://opts/x/{00000..00003}.tar",
            tmp_path / "ds",
            IndexOptions(
                resolution=16, label_key="json:label", storage_options=opts, val_fraction=0.25, progress=False
            ),
        )
        batch = next(DataStream(_spec(m, storage_options=tuple(opts.items()))))
        assert batch["image"].shape == (8, 3, 16, 16)
        cfg = compose("experiment=mnist_dcgan", f"data.path={tmp_path / 'ds'}")
        cfg.data.storage_options = opts
        configure_reads(cfg)
        try:
            assert dict(default_policy().storage_options) == opts
            refs = next(iter_images(m, "val", 12))
            assert refs.shape == (12, 16, 16, 3)
        finally:
            configure_reads(compose("experiment=mnist_dcgan", f"data.path={tmp_path / 'ds'}"))

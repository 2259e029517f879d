"""Training on foreign shards where they are: img2dataset-style shards (jpg + json + txt) served
over HTTP and from an S3 API on loopback, indexed by `bigtrain index`, trained on with
`data.path` pointing at the index, and resumed exactly (the same weights as an uninterrupted run)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.conftest import TINY, run_cli
from tests.servers import http_server, s3_server, write_img2dataset_shards


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("foreign")
    write_img2dataset_shards(root / "train", shards=4, per_shard=12, seed=0)
    write_img2dataset_shards(root / "val", shards=1, per_shard=24, seed=1)
    return root


def _digests(ckpt: Path) -> dict[str, str]:
    return json.loads(run_cli("inspect", str(ckpt), "--json").stdout)["digests"]


def _straight_and_resumed(ds: Path, root: Path, env: dict[str, str] | None = None, *extra: str) -> None:
    """12 steps at once, and 6 + 6 with a restart between: the same weights, optimiser states, RNG
    and stream position, and the same samples consumed in the same order."""
    common = (
        "experiment=mnist_dcgan",
        f"data.path={ds}",
        "tracking.enabled=false",
        *TINY,
        "data.batch_size=8",
        "data.num_workers=2",  # workers open their own connections (forked after the main one's)
        "data.resize=random",
        "data.flip=true",
        "data.record_keys=true",
        "trainer.ckpt_every=6",
        "trainer.sample_every=12",
        *extra,
    )
    a, b = root / "straight", root / "resumed"
    run_cli("train", *common, f"run.dir={a}", "trainer.max_steps=12", env=env)
    run_cli("train", *common, f"run.dir={b}", "trainer.max_steps=6", env=env)
    run_cli("train", *common, f"run.dir={b}", "trainer.max_steps=12", env=env)
    assert _digests(a / "checkpoints" / "step-00000012") == _digests(b / "checkpoints" / "step-00000012")
    keys_a = (a / "data-keys" / "rank-0.txt").read_text().split()
    keys_b = (b / "data-keys" / "rank-0.txt").read_text().split()
    assert keys_a == keys_b and len(keys_a) == 12 * 8
    assert len(set(keys_a[:48])) == 48  # the first epoch: each of the 48 training samples once


def test_http_shards_index_train_evaluate_and_resume_exactly(foreign: Path, tmp_path: Path) -> None:
    with http_server(foreign) as (url, handler):
        out = run_cli(
            "index",
            f"{url}/train/{{00000..00003}}.tar",
            str(tmp_path / "ds"),
            "--val",
            f"{url}/val/00000.tar",
            "--resolution",
            "16",
            "--label-key",
            "json:label",
            "--no-progress",
        ).stdout
        assert (
            "remote shards, 16px, 3 channel(s), 3 classes from json:label, captions and json metadata" in out
        )
        assert "train: 48 samples in 4 shards, val: 24 samples in 1 shards" in out
        _straight_and_resumed(tmp_path / "ds", tmp_path, None, "eval.every=12")
        # every shard came over HTTP (nothing was copied next to the index)
        assert {"/train/00000.tar", "/val/00000.tar"} <= set(handler.requests)
    assert [p.name for p in (tmp_path / "ds").iterdir()] == ["dataset.json"]
    log = (tmp_path / "straight" / "train.log").read_text()
    assert "fid/digits" in log  # the val split's reference images were read over HTTP too


def test_s3_shards_through_a_loopback_s3_api_train_and_resume_exactly(foreign: Path, tmp_path: Path) -> None:
    files = {f"in/{p.parent.name}/{p.name}": p.read_bytes() for p in sorted(foreign.glob("*/*.tar"))}
    with s3_server("shards", files) as env:
        out = run_cli(
            "index",
            "s3://shards/in/train/{00000..00003}.tar",
            str(tmp_path / "ds"),
            "--val",
            "s3://shards/in/val/00000.tar",
            "--resolution",
            "16",
            "--label-key",
            "json:label",
            "--digests",
            "yes",
            "--no-progress",
            env=env,
        ).stdout
        assert "train: 48 samples in 4 shards" in out
        manifest = json.loads((tmp_path / "ds" / "dataset.json").read_text())
        first = manifest["splits"]["train"]["shards"][0]
        local = foreign / "train" / "00000.tar"
        assert first["file"] == "s3://shards/in/train/00000.tar" and first["bytes"] == local.stat().st_size
        assert first["sha256"] == hashlib.sha256(local.read_bytes()).hexdigest()
        # and decoded by torch in the training process (data.decode=gpu runs on the CPU here)
        extra = ("eval.enabled=false", "data.decode=gpu", "data.resample=bilinear")
        _straight_and_resumed(tmp_path / "ds", tmp_path, env, *extra)

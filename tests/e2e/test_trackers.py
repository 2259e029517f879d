"""``tracking=tensorboard`` and ``tracking=wandb`` (offline): a short run, killed after its last
checkpoint and resumed, then read back with each library's own reader: params, metrics at their
steps (once each), sample grids, artifacts, and one run across the resume.

The kill is simulated: the first job trains to step 20 with checkpoints at 10 and 20 (and logs
both), then the step-20 checkpoint is deleted, as if the job had died after logging step 20 but
before saving it. The resumed job continues from step 10 to 30, logging steps 11-20 again.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest

from bigtrain.errors import ConfigError
from tests.conftest import TINY, compose, run_cli

ARGS = ("trainer.ckpt_every=10", "trainer.sample_every=10", "eval.every=10")


def _train(mnist: Path, run_dir: Path, *extra: str, env: dict[str, str] | None = None):  # noqa: ANN202
    return run_cli(
        "train",
        "experiment=mnist_dcgan",
        f"data.path={mnist}",
        f"run.dir={run_dir}",
        *TINY,
        *ARGS,
        *extra,
        env=env,
    )


def _killed_and_resumed(mnist: Path, run: Path, *extra: str, env: dict[str, str] | None = None) -> None:
    _train(mnist, run, "trainer.max_steps=20", *extra, env=env)
    shutil.rmtree(run / "checkpoints" / "step-00000020")  # died after logging step 20, before saving it
    _train(mnist, run, "trainer.max_steps=30", *extra, env=env)


def _meta(run: Path, step: int) -> dict:
    return json.loads((run / "checkpoints" / f"step-{step:08d}" / "meta.json").read_text())


def test_unknown_backend_is_one_config_error() -> None:
    with pytest.raises(ConfigError, match="tracking.backend=nope.*mlflow, tensorboard, wandb"):
        compose("tracking.backend=nope")
    assert compose().tracking.backend == "mlflow"  # the default stays MLflow


# -- TensorBoard -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tb_run(mnist_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("tb") / "run"
    _killed_and_resumed(mnist_shards, run, "tracking=tensorboard")
    return run


def test_tensorboard_records_one_run_across_the_resume(tb_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    logdir = tb_run / "tensorboard"
    assert len(list(logdir.glob("events.out.tfevents.*"))) == 2  # one file per job, one folder
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    # metrics: every logged step once, steps 11-20 of the killed job replaced by the resumed job's
    steps = [e.step for e in acc.Scalars("loss/D")]
    assert steps == [5, 10, 15, 20, 25, 30]
    assert [e.step for e in acc.Scalars("fid/digits")] == [10, 20, 30]
    assert {"img_per_s", "images_seen", "is/digits"} <= set(tags["scalars"])
    # sample grids as images at their steps
    images = acc.Images("samples")
    assert [i.step for i in images] == [10, 20, 30]
    assert images[-1].encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n" and images[-1].width > 32
    # params: hparams (session start info) from the first job, and the config as text
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hp = HParamsPluginData.FromString(content).session_start_info.hparams
    assert hp["model.name"].string_value == "dcgan"
    assert hp["data.batch_size"].number_value == 16
    assert hp["tracking.backend"].string_value == "tensorboard"
    (text,) = acc.Tensors("config/text_summary")  # add_text: a string tensor of the text plugin
    assert text.step == 0 and b"    model:\n" in text.tensor_proto.string_val[0]
    # artifacts copied next to the events; tags as JSON
    art = logdir / "artifacts"
    assert (art / "config.yaml").is_file()
    assert {"model.safetensors", "config.json", "README.md"} <= {p.name for p in (art / "model").iterdir()}
    tags_json = json.loads((logdir / "tags.json").read_text())
    assert tags_json["status"] == "FINISHED"
    assert tags_json["last_checkpoint"].endswith("step-00000030")
    # the checkpoints name the backend; no MLflow run was made
    meta = _meta(tb_run, 30)
    assert meta["tracker"] == "tensorboard" and meta["mlflow_run_id"] is None
    assert meta["tracker_run_id"] == str(logdir.resolve())
    assert not Path("mlflow.db").exists()


# -- Weights & Biases (offline) -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def wandb_run(mnist_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wandb")
    run = root / "run"
    home = root / "wandb-home"  # nothing under ~ and nothing on the network
    env = {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DIR": str(home),
        "WANDB_CACHE_DIR": str(home / "cache"),
        "WANDB_CONFIG_DIR": str(home / "config"),
        "WANDB_DATA_DIR": str(home / "data"),
        "WANDB_ARTIFACT_DIR": str(home / "artifacts"),
    }
    _killed_and_resumed(mnist_shards, run, "tracking=wandb", "tracking.experiment=bigtrain-test", env=env)
    return run


def _records(run_file: Path) -> list:
    """The protobuf records of an offline run's ``.wandb`` file: a 7-byte header (``:W&B``, a magic
    number, a version), then LevelDB's log format (32 KiB blocks of chunks: CRC, length, type)."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending, out = 7, b"", []
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # a block's zero-filled tail
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(pending)
            out.append(rec)
            pending = b""
    return out


def _of(records: list, kind: str) -> list:
    return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]


def _items(items) -> dict:  # noqa: ANN001 - repeated HistoryItem / SummaryItem / ConfigItem
    return {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}


def test_wandb_offline_records_one_run_across_the_resume(wandb_run: Path) -> None:
    folders = sorted((wandb_run / "wandb").glob("offline-run-*"))
    assert len(folders) == 2  # one per job
    meta10, meta30 = _meta(wandb_run, 10), _meta(wandb_run, 30)
    run_id = meta10["tracker_run_id"]
    assert meta10["tracker"] == meta30["tracker"] == "wandb" and meta30["tracker_run_id"] == run_id
    assert meta30["mlflow_run_id"] is None
    assert all(f.name.endswith(f"-{run_id}") for f in folders)
    first, resumed = folders
    recs = [_records(f / f"run-{run_id}.wandb") for f in folders]
    for rs in recs:  # one run id across the resume
        (run_rec,) = _of(rs, "run")
        assert run_rec.run_id == run_id and run_rec.project == "bigtrain-test"
    # params: the resolved config, given when the run started
    config = _items(_of(recs[0], "run")[0].config.update)
    assert config["model"]["name"] == "dcgan" and config["data"]["batch_size"] == 16
    assert config["tracking"]["backend"] == "wandb"
    # metrics at their steps: the killed job logged 5-20, the resumed one 15-30 (after step 10)
    history = [[_items(h.item) for h in _of(rs, "history")] for rs in recs]
    assert [[row["_step"] for row in rows if "loss/D" in row] for rows in history] == [
        [5, 10, 15, 20],
        [15, 20, 25, 30],
    ]
    assert [[row["_step"] for row in rows if "fid/digits" in row] for rows in history] == [[10, 20], [20, 30]]
    # sample grids: wandb.Image files, referenced from the history at their steps
    row30 = history[1][-1]
    assert row30["_step"] == 30 and row30["samples/_type"] == "image-file"  # nested keys, joined by /
    assert (resumed / "files" / row30["samples/path"]).is_file()
    assert len(list((first / "files" / "media" / "images").glob("samples_*.png"))) == 2
    # artifacts: config.yaml and the model files in the run's files; tags in the summary
    for folder in folders:
        art = folder / "files" / "artifacts"
        assert (art / "config.yaml").is_file()
        assert {"model.safetensors", "config.json", "README.md"} <= {
            p.name for p in (art / "model").iterdir()
        }
    summary: dict = {}
    for update in _of(recs[1], "summary"):
        summary.update(_items(update.update))
    assert summary["tags/status"] == "FINISHED"
    assert summary["tags/last_checkpoint"].endswith("step-00000030")
    assert not Path("mlflow.db").exists()
    assert os.environ.get("WANDB_MODE") is None  # the test's settings stayed in its subprocesses

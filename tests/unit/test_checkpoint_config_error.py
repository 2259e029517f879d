"""A checkpoint whose saved config.yaml has a key today's schema lacks (written by another bigtrain)
is one CheckpointError line naming the key, the checkpoint and the fix, not an OmegaConf traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from bigtrain.checkpoint.io import open_checkpoint
from bigtrain.errors import CheckpointError
from bigtrain.train.snapshot import checkpoint_config


def _fake_checkpoint(root: Path, config: dict) -> Path:
    """The two files a checkpoint's config is read from: meta.json and config.yaml."""
    path = root / "checkpoints" / "step-00000005"
    path.mkdir(parents=True)
    (path / "meta.json").write_text(json.dumps({"step": 5}))
    (path / "config.yaml").write_text(OmegaConf.to_yaml(config))
    return path


def _saved_config(path: Path) -> object:
    """The checkpoint's config on today's schema, as sampling and resuming read it."""
    return checkpoint_config(open_checkpoint(path))


def test_unknown_saved_key_is_one_line(tmp_path: Path) -> None:
    path = _fake_checkpoint(tmp_path, {"task": "gan", "model": {"name": "dcgan", "from_the_future": 3}})
    with pytest.raises(CheckpointError) as caught:
        _saved_config(path)
    message = str(caught.value)
    assert "\n" not in message
    assert "'model.from_the_future'" in message and str(path) in message
    assert "another bigtrain version" in message and "remove 'model.from_the_future'" in message


def test_known_keys_still_load(tmp_path: Path) -> None:
    path = _fake_checkpoint(tmp_path, {"task": "gan", "model": {"name": "dcgan", "z_dim": 64}})
    cfg = _saved_config(path)
    assert cfg.model.z_dim == 64  # type: ignore[attr-defined]

"""Checkpoints: atomic writes, keep-last-k, content digests, damaged-checkpoint fallback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bigtrain.checkpoint import io as ckio
from bigtrain.checkpoint.digest import digest
from bigtrain.checkpoint.io import (
    CheckpointError,
    latest_valid,
    list_checkpoints,
    open_checkpoint,
    save_checkpoint,
)


def _save(run: Path, step: int, value: float = 1.0, keep: int = 3) -> Path:
    shared = {"G": {"w": torch.full((3,), value)}, "trainer": {"step": step}}
    return save_checkpoint(run, step, shared, {"rng": {"s": step}}, {"note": "x"}, "a: 1\n", keep)


def test_roundtrip_digests_and_layout(tmp_path: Path) -> None:
    path = _save(tmp_path, 7)
    assert path.name == "step-00000007"
    ck = open_checkpoint(path)
    assert ck.step == 7 and ck.component_names() == ["G", "rng.rank0", "trainer"]
    assert torch.equal(ck.load("G")["w"], torch.ones(3))
    assert ck.meta["digests"]["G"] == digest({"w": torch.ones(3)})
    assert (path / "config.yaml").read_text() == "a: 1\n"
    ck.verify()


def test_digest_is_content_based() -> None:
    a = {"x": torch.arange(4.0), "n": 3}
    assert digest(a) == digest({"n": 3, "x": torch.arange(4.0)})
    assert digest(a) != digest({"x": torch.arange(4.0).double(), "n": 3})
    assert digest(a) != digest({"x": torch.arange(4.0) + 1e-7, "n": 3})


def test_keep_last_k(tmp_path: Path) -> None:
    for step in (1, 2, 3, 4, 5):
        _save(tmp_path, step, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000004", "step-00000005"]


def test_failed_save_leaves_previous_checkpoint_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = _save(tmp_path, 10)
    real = ckio._save_file
    calls = {"n": 0}

    def failing(obj: object, path: Path) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        real(obj, path)

    monkeypatch.setattr(ckio, "_save_file", failing)
    with pytest.raises(CheckpointError) as err:
        _save(tmp_path, 20)
    msg = str(err.value)
    assert "step-00000020" in msg and "No space left" in msg and str(good) in msg and "\n" not in msg
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000010"]
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    latest = latest_valid(tmp_path)
    assert latest is not None and latest.step == 10


def test_half_written_folder_is_not_a_checkpoint(tmp_path: Path) -> None:
    _save(tmp_path, 1)
    (tmp_path / "checkpoints" / ".tmp-step-00000002").mkdir()
    (tmp_path / "checkpoints" / "step-00000003").mkdir()  # no meta.json: never completed
    assert latest_valid(tmp_path).step == 1  # type: ignore[union-attr]


def test_damaged_component_falls_back_to_previous(tmp_path: Path) -> None:
    _save(tmp_path, 1, value=1.0)
    newest = _save(tmp_path, 2, value=2.0)
    data = (newest / "G.pt").read_bytes()
    (newest / "G.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="G.pt"):
        open_checkpoint(newest).verify()
    assert latest_valid(tmp_path).step == 1  # type: ignore[union-attr]


def test_a_state_that_does_not_fit_is_one_line_naming_the_component() -> None:
    """Resuming into other networks or optimizers: one CheckpointError line per case, not a
    load_state_dict traceback (the e2e test covers a wider G and a D without BatchNorm)."""
    import torch

    from bigtrain.checkpoint.manager import load_component
    from bigtrain.errors import CheckpointError

    net = torch.nn.Linear(4, 2)
    with pytest.raises(
        CheckpointError,
        match="the checkpoint has no 'G' component; likely cause: it was written by a run of another task",
    ):
        load_component("G", net, {"D": net.state_dict()})
    with pytest.raises(CheckpointError) as err:
        load_component("G", net, {"G": torch.nn.Linear(4, 3).state_dict()})
    assert str(err.value).startswith(
        "checkpoint component 'G' does not fit this run: size mismatch for weight"
    )
    assert "(and 1 more)" in str(err.value) and "\n" not in str(err.value)
    opt = torch.optim.Adam(net.parameters())
    other = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    with pytest.raises(
        CheckpointError, match="checkpoint component 'opt_G' does not fit this run: loaded state dict"
    ):
        load_component("opt_G", opt, {"opt_G": other.state_dict()})

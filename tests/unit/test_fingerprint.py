"""The config fingerprint: which keys make a run, and how a change is described."""

from __future__ import annotations

import re
from pathlib import Path

from bigtrain.config.fingerprint import MAY_CHANGE, changes, describe, fingerprint, flatten, may_change
from tests.conftest import compose

README = Path(__file__).resolve().parents[2] / "README.md"


def _cfg(*overrides: str):  # noqa: ANN202
    return compose("experiment=mnist_dcgan", "data.path=/x", *overrides)


def test_cadence_and_paths_do_not_change_the_fingerprint() -> None:
    base = fingerprint(_cfg())
    same = _cfg(
        "trainer.max_steps=9",
        "trainer.ckpt_every=7",
        "eval.every=3",
        "tracking.uri=http://127.0.0.1:1",
        "data.path=/elsewhere",
        "data.num_workers=0",
        "run.dir=/tmp/r",
        "resume=never",
    )
    assert fingerprint(same) == base
    for recipe in ("loss=hinge", "model.g_width=8", "data.batch_size=8", "seed=1", "eval.num_samples=10"):
        assert fingerprint(_cfg(recipe)) != base, recipe


def test_changes_name_each_key_with_old_and_new_values() -> None:
    diff = changes(_cfg(), _cfg("loss=wgan_gp", "model.d_norm=layer", "trainer.max_steps=5"))
    assert diff == {
        "loss.d_steps": (1, 5),
        "loss.name": ("non_saturating", "wgan_gp"),
        "model.d_norm": ("batch", "layer"),
    }
    assert (
        describe(diff, limit=2)
        == "loss.d_steps: 1 -> 5, loss.name: 'non_saturating' -> 'wgan_gp', and 1 more"
    )
    assert may_change("tracking.experiment") and not may_change("loss.name")
    assert may_change("loss.name", ["loss.*"])


def test_lists_are_single_values() -> None:
    flat = flatten(_cfg("stages.schedule=[{resolution: 32, steps: 5}]"))
    assert flat["stages.schedule"] == [{"resolution": 32, "steps": 5}]


def test_readme_lists_the_keys_that_may_change() -> None:
    block = re.search(r"<!-- may-change -->(.*?)<!-- /may-change -->", README.read_text(), re.S)
    assert block is not None
    assert re.findall(r"`([^`]+)`", block.group(1)) == list(MAY_CHANGE)


def test_sweep_job_folders_name_the_swept_values_and_hash_the_rest() -> None:
    from bigtrain.config.sweep import fixed_keys, job_dirname

    argv = [
        "experiment=mnist_dcgan",
        "data.path=/d",
        "trainer.max_steps=5",
        "loss=hinge,lsgan",
        "optim.g.lr=1e-3",
    ]
    fixed = fixed_keys(argv)
    assert fixed == ["data.path", "experiment", "optim.g.lr", "trainer.max_steps"]
    job = ["experiment=mnist_dcgan", "data.path=/d", "trainer.max_steps=5", "loss=hinge", "optim.g.lr=1e-3"]
    name = job_dirname(job, fixed)
    assert re.fullmatch(r"loss=hinge-[0-9a-f]{8}", name)
    # another fixed value is another job; a longer run, another run.dir or data path is the same job
    assert job_dirname([*job[:4], "optim.g.lr=2e-3"], fixed) != name
    assert job_dirname([*job[:2], "trainer.max_steps=50", *job[3:], "run.dir=/x"], fixed) == name
    # values that are not path-safe are made safe
    assert job_dirname(["model.arch.attention=[16,32]"], []).startswith("model.arch.attention=_16,32-")

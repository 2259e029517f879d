"""bigtrain as a wheel, installed outside the checkout: the configs, the ``py.typed`` marker and the
LICENSE ship inside it, and the installed ``bigtrain`` command composes a preset and trains from
another folder.

The wheel is built offline (no build isolation: setuptools and wheel come from the test's own
environment) from a copy of what a source distribution holds (``pyproject.toml``, ``README.md``,
``LICENSE``, ``bigtrain/``), so the build writes no ``build/`` folder into the checkout. It goes
into a fresh virtualenv whose dependencies come from this environment's site-packages through a
``.pth`` path line: a path line adds the folder to ``sys.path`` without running that folder's own
``.pth`` files, so the editable install of the checkout (an import hook started by a ``.pth``)
stays out, and ``import bigtrain`` can only find the wheel's copy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import REPO, TINY

SDIST_FILES = ("pyproject.toml", "README.md", "LICENSE")


def _run(cmd: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env |= {"PYTHONUNBUFFERED": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel `pip wheel` builds from the repository's sources."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in SDIST_FILES:
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(
        REPO / "bigtrain", src / "bigtrain", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    out = root / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "-q", "-w", str(out), str(src)], cwd=root)  # fmt: skip
    (whl,) = out.glob("bigtrain-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv holding the wheel; every other package is this environment's."""
    env = tmp_path_factory.mktemp("venv") / "env"
    _run([sys.executable, "-m", "venv", "--without-pip", str(env)], cwd=env.parent)
    python = env / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=env.parent).stdout.strip())  # fmt: skip
    (site / "_bigtrain_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # this environment's pip, run by the new interpreter, installs there (and its bigtrain script
    # starts that interpreter); --ignore-installed: never touch the editable install it can see
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed",
          str(wheel)], cwd=env.parent)  # fmt: skip
    return env


def test_wheel_holds_the_configs_the_type_marker_and_the_license(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    presets = {p.relative_to(REPO).as_posix() for p in (REPO / "bigtrain" / "configs").rglob("*.yaml")}
    assert (
        "bigtrain/configs/train.yaml" in presets and "bigtrain/configs/experiment/mnist_dcgan.yaml" in presets
    )
    assert presets <= names, sorted(presets - names)
    assert "bigtrain/py.typed" in names
    dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    assert f"{dist_info}/licenses/LICENSE" in names
    assert zipfile.ZipFile(wheel).read(f"{dist_info}/licenses/LICENSE") == (REPO / "LICENSE").read_bytes()
    metadata = zipfile.ZipFile(wheel).read(f"{dist_info}/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata
    assert 'Requires-Dist: deepspeed>=0.15; extra == "deepspeed"' in metadata
    assert not any(n.startswith("tests/") for n in names)


def test_installed_wheel_runs_outside_the_checkout(venv: Path, mnist_shards: Path, tmp_path: Path) -> None:
    python, bigtrain = venv / "bin" / "python", venv / "bin" / "bigtrain"
    where = _run([str(python), "-c", "import sys, bigtrain; print(bigtrain.__file__); "
                  "print(any('__editable__' in m for m in sys.modules))"], cwd=tmp_path).stdout.split()  # fmt: skip
    assert Path(where[0]).is_relative_to(venv) and not Path(where[0]).is_relative_to(REPO), where
    assert where[1] == "False"  # the checkout's editable-install hook was not loaded
    info = json.loads(_run([str(bigtrain), "info", "experiment=mnist_dcgan", "--json"], cwd=tmp_path).stdout)
    assert info["model"] == "dcgan" and info["task"] == "gan"
    run = tmp_path / "run"
    _run([str(bigtrain), "train", "experiment=mnist_dcgan", f"data.path={mnist_shards}", f"run.dir={run}",
          "tracking.enabled=false", *TINY, "trainer.max_steps=4", "eval.enabled=false"], cwd=tmp_path)  # fmt: skip
    assert (run / "checkpoints" / "step-00000004" / "meta.json").is_file()
    assert "name: dcgan" in (run / "config.yaml").read_text()


def test_a_users_preset_folder_joins_the_shipped_ones(venv: Path, mnist_shards: Path, tmp_path: Path) -> None:
    """Presets outside the package: ``hydra.searchpath`` adds a folder (here relative to the working
    directory), whose ``experiment/mine.yaml`` builds on a shipped preset (README, Installing)."""
    (tmp_path / "presets" / "experiment").mkdir(parents=True)
    (tmp_path / "presets" / "experiment" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - mnist_dcgan\nrun:\n  name: mine\nema:\n  start_step: 7\n"
    )
    run = tmp_path / "run"
    _run([str(venv / "bin" / "bigtrain"), "train", "hydra.searchpath=[file://presets]", "experiment=mine",
          f"data.path={mnist_shards}", f"run.dir={run}", "tracking.enabled=false", *TINY, "trainer.max_steps=1",
          "eval.enabled=false"], cwd=tmp_path)  # fmt: skip
    config = OmegaConf.load(run / "config.yaml")
    assert (config.run.name, config.ema.start_step, config.model.name) == ("mine", 7, "dcgan")
    assert (run / "checkpoints" / "step-00000001").is_dir()

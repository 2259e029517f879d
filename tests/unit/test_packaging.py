"""What can be checked of the Docker image and the SLURM scripts without a Docker engine or a GPU
cluster: the files parse, everything they copy or call exists, the image installs bigtrain from
the same pyproject.toml (and pins) as CI, and the scripts carry the preemption settings."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import deepspeed
import pytest
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]


def _dockerfile() -> DockerfileParser:
    parser = DockerfileParser(path=str(REPO / "docker" / "Dockerfile"))
    assert parser.structure, "empty Dockerfile"
    return parser


def test_dockerfile_parses_and_copies_only_existing_paths() -> None:
    parser = _dockerfile()
    instructions = [i["instruction"] for i in parser.structure if i["instruction"] != "COMMENT"]
    assert instructions[0] in ("ARG", "FROM") and "FROM" in instructions
    assert "ENTRYPOINT" in instructions and "WORKDIR" in instructions
    copies = [i["value"].split() for i in parser.structure if i["instruction"] == "COPY"]
    assert copies
    for *sources, _dest in copies:
        for src in sources:
            assert (REPO / src).exists(), f"Dockerfile copies {src}, which is not in the repository"
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored  # a multi-GB context otherwise


def test_image_installs_from_the_same_pins_as_ci() -> None:
    """The Makefile pins torch (CI's venv), before bigtrain; pyproject.toml's ranges hold those pins;
    the image's base carries the same torch, so installing bigtrain there keeps it."""
    parser = _dockerfile()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    makefile = (REPO / "Makefile").read_text()
    pins = dict(p.split("==") for p in re.search(r"^TORCH_PINS := (.+)$", makefile, re.M)[1].split())
    assert set(pins) == {"torch", "torchvision"}
    recipe = makefile.split("$(STAMP): pyproject.toml", 1)[1]
    assert recipe.index("pip install -q $(TORCH_PINS)") < recipe.index("pip install -q -e '.[dev]'")
    for req in map(Requirement, project["dependencies"]):
        if req.name in pins:
            assert req.specifier.contains(pins[req.name]), (str(req), pins[req.name])
    base = parser.args.get("BASE_IMAGE", parser.baseimage)
    assert base.split(":")[1].startswith(pins["torch"] + "-cuda"), (base, pins)
    runs = " ".join(i["value"] for i in parser.structure if i["instruction"] == "RUN")
    extras = re.findall(r'pip install -e "\.\[([a-z,]+)\]"', runs)
    assert extras, "the image must install bigtrain from pyproject.toml"
    for extra in extras[0].split(","):
        assert extra in project["optional-dependencies"]


def test_deepspeed_ops_named_in_the_image_exist() -> None:
    runs = " ".join(i["value"] for i in _dockerfile().structure if i["instruction"] == "RUN")
    wanted = set(re.findall(r"(DS_BUILD_[A-Z_]+)=1", runs))
    assert {"DS_BUILD_FUSED_ADAM", "DS_BUILD_CPU_ADAM"} <= wanted  # what ZeRO's optimizers use
    builders = Path(deepspeed.__file__).parent / "ops" / "op_builder"
    known = set()
    for f in builders.rglob("*.py"):
        known |= set(re.findall(r"BUILD_VAR = [\"'](DS_BUILD_[A-Z_]+)[\"']", f.read_text()))
    assert wanted <= known, f"unknown DeepSpeed build flags: {sorted(wanted - known)}"


def test_entrypoint_runs_bigtrain_or_a_program(tmp_path: Path) -> None:
    entry = REPO / "docker" / "entrypoint.sh"
    assert os.access(entry, os.X_OK)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "BIGTRAIN_CACHE": str(tmp_path / "c"),
    }
    out = subprocess.run([str(entry), "--help"], capture_output=True, text=True, env=env, check=True)
    assert "usage: bigtrain COMMAND" in out.stdout and (tmp_path / "c").is_dir()
    out = subprocess.run(
        [str(entry), "bigtrain", "--help"], capture_output=True, text=True, env=env, check=True
    )
    assert "usage: bigtrain COMMAND" in out.stdout
    out = subprocess.run(
        [str(entry), "python", "-c", "print(42)"], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == "42"


def test_slurm_scripts_parse_and_carry_the_preemption_settings() -> None:
    for script in ("train.sbatch", "train_multinode.sbatch", "launch.sh"):
        subprocess.run(["bash", "-n", str(REPO / "slurm" / script)], check=True)
    for script in ("train.sbatch", "train_multinode.sbatch"):
        directives = [
            line.split(None, 1)[1].split("#")[0].strip()
            for line in (REPO / "slurm" / script).read_text().splitlines()
            if line.startswith("#SBATCH ")
        ]
        assert "--requeue" in directives and "--open-mode=append" in directives
        assert any(re.fullmatch(r"--signal=B:USR2@\d+", d) for d in directives)
        assert "--ntasks-per-node=1" in directives  # one torchrun per node
        assert "slurm/launch.sh" in (REPO / "slurm" / script).read_text()
    launch = (REPO / "slurm" / "launch.sh").read_text()
    assert "scontrol show hostnames" in launch and "SLURM_NODEID" in launch and 'trap "" USR2' in launch


def test_without_the_deepspeed_extra_the_prior_engine_stops_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bigtrain.distributed.zero import import_deepspeed
    from bigtrain.errors import ConfigError

    monkeypatch.setitem(sys.modules, "deepspeed", None)  # as if not installed: the import fails
    with pytest.raises(ConfigError, match=r"^prior\.engine=deepspeed needs DeepSpeed \(") as exc:
        import_deepspeed()
    assert "[deepspeed] extra" in str(exc.value) and "prior.engine=torch" in str(exc.value)

"""Shared fixtures and helpers: real MNIST shards from the built-in digits, a private bigtrain
cache, a hermetic working directory, the config as `bigtrain train` composes it, and the CPU
accelerator that in-process task tests use.

The cache (``BIGTRAIN_CACHE``) is one temporary folder per test session, exported to the
environment so CLI subprocesses share it: the digits feature network and FID reference statistics
are built once per session, as they would be once per machine for a user.

Hermetic: the session runs in a temporary working directory, so no test reads or writes the
checkout's ``data/``, ``runs/`` or ``mlflow.db`` (a user's `make demo` output there cannot change a
result), nor the user's ``~/.cache/bigtrain``; the session fails if any of them changed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from filelock import FileLock
from omegaconf import DictConfig

from bigtrain.data.manifest import DatasetManifest
from bigtrain.data.prepare import PrepareOptions, prepare
from bigtrain.distributed import LocalAccelerator
from bigtrain.train.compose import compose_config

REPO = Path(__file__).resolve().parents[1]
BIGTRAIN = [sys.executable, "-m", "bigtrain"]
GUARDED = [REPO / "data", REPO / "runs", REPO / "mlflow.db", Path.home() / ".cache" / "bigtrain"]


# `make test` runs the suite on pytest-xdist workers a file at a time (`--dist loadfile`): a file's
# tests share its fixtures (one SLURM cluster, one resumed pair of runs) on one worker. Files are
# handed out longest first (measured on the 2-core machine), so no long file starts last.
LONGEST_FIRST = [
    "e2e/test_prior_cli.py",
    "integration/test_slurm.py",
    "e2e/test_train_cli.py",
    "e2e/test_tokenizer_cli.py",
    "integration/test_faults.py",
    "e2e/test_progan_cli.py",
    "e2e/test_likelihood_cli.py",
    "integration/test_multiprocess.py",
    "integration/test_mlflow_server.py",
    "e2e/test_preemption.py",
    "e2e/test_recorded_results.py",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow tier: everything in tests/e2e and tests/integration (real processes, servers, SLURM)
    plus the unit tests marked ``slow``; `make test-fast` runs the rest. Then the longest files first."""
    for item in items:
        if {"e2e", "integration"} & set(Path(str(item.fspath)).parts):
            item.add_marker(pytest.mark.slow)

    def rank(item: pytest.Item) -> int:
        path = Path(str(item.fspath)).as_posix()
        return next((i for i, f in enumerate(LONGEST_FIRST) if path.endswith(f)), len(LONGEST_FIRST))

    items.sort(key=rank)  # stable: the order within a file, and of the rest, stays


def _fingerprint(paths: list[Path]) -> dict[str, Any]:
    """Every file under ``paths`` with its size and modification time (absent paths: None)."""
    out: dict[str, Any] = {}
    for root in paths:
        if not root.exists():
            out[str(root)] = None
        elif root.is_file():
            st = root.stat()
            out[str(root)] = (st.st_size, st.st_mtime_ns)
        else:
            out[str(root)] = sorted(
                (str(f.relative_to(root)), f.stat().st_size, f.stat().st_mtime_ns)
                for f in root.rglob("*")
                if f.is_file()
            )
    return out


def shared_path(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """``name`` in the folder every pytest-xdist worker of this run shares (the parent of the
    workers' own temporary folders), or in this session's folder when not run by xdist."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """The shared folder ``name``, built by ``build(folder)`` by whichever worker gets there first
    (the others wait for it): one prepared dataset, one trained tokenizer per test run."""
    out = shared_path(tmp_path_factory, name)
    done = out.with_name(out.name + ".done")
    with FileLock(str(out) + ".lock"):
        if not done.exists():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            build(out)
            done.touch()
    return out


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private cache (shared by the run's xdist workers, so the digits network and reference
    statistics are built once) and working directory for the whole session; the checkout's and
    the user's files are checked unchanged at the end."""
    before = _fingerprint(GUARDED)
    cache = shared_path(tmp_path_factory, "bigtrain-cache")
    cache.mkdir(parents=True, exist_ok=True)
    work = tmp_path_factory.mktemp("cwd")
    old_cache, old_cwd = os.environ.get("BIGTRAIN_CACHE"), os.getcwd()
    os.environ["BIGTRAIN_CACHE"] = str(cache)
    os.chdir(work)
    yield cache
    os.chdir(old_cwd)
    if old_cache is None:
        os.environ.pop("BIGTRAIN_CACHE", None)
    else:
        os.environ["BIGTRAIN_CACHE"] = old_cache
    changed = [p for p, fp in _fingerprint(GUARDED).items() if fp != before[p]]
    assert not changed, f"the test session changed files outside its temporary folders: {changed}"


def compose(*overrides: str) -> DictConfig:
    """The config `bigtrain train OVERRIDES` would run with (a bad override: ConfigError)."""
    return compose_config(list(overrides))


def cpu(precision: str = "no") -> LocalAccelerator:
    """The CPU accelerator for in-process task tests (``no``, ``bf16`` or ``fp16`` autocast)."""
    return LocalAccelerator("cpu", precision)


def declared_manifest(
    resolution: int = 32, channels: int = 1, classes: int = 10, root: Path | None = None, **extra: Any
) -> DatasetManifest:
    """A dataset shape without shards, for building tasks in-process."""
    names = [str(i) for i in range(classes)]
    return DatasetManifest(root or Path("."), "declared", resolution, channels, names, {}, dict(extra))


@pytest.fixture(scope="session")
def mnist_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 5,000 built-in digits at 32x32: 4,500 train in 9 shards, 500 val (as `make demo` prepares
    them); tests must not write into it."""

    def build(out: Path) -> None:
        prepare("builtin:mnist5k", out, PrepareOptions(resolution=32, samples_per_shard=500, progress=False))

    return built_once(tmp_path_factory, "mnist5k", build)


@pytest.fixture(scope="session")
def mnist_edges(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in digits as (outline, digit) pairs at 32x32 (`builtin:mnist5k-edges`), 500 per
    shard; tests must not write into it."""

    def build(out: Path) -> None:
        prepare(
            "builtin:mnist5k-edges", out, PrepareOptions(resolution=32, samples_per_shard=500, progress=False)
        )

    return built_once(tmp_path_factory, "mnist5k-edges", build)


@pytest.fixture(scope="session")
def mnist_domains(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in digits as two unpaired domains at 32x32 (`builtin:mnist5k-domains`: A plain,
    B thick and inverted, no digit in both); tests must not write into it."""

    def build(out: Path) -> None:
        prepare(
            "builtin:mnist5k-domains",
            out,
            PrepareOptions(resolution=32, samples_per_shard=500, progress=False),
        )

    return built_once(tmp_path_factory, "mnist5k-domains", build)


@pytest.fixture(scope="session")
def mnist_captions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in digits at 32x32 with a caption each (`builtin:mnist5k-captions`: "a thick,
    right-slanted seven"; measured attribute thresholds in dataset.json), 500 per shard; tests must
    not write into it."""

    def build(out: Path) -> None:
        prepare(
            "builtin:mnist5k-captions",
            out,
            PrepareOptions(resolution=32, samples_per_shard=500, progress=False),
        )

    return built_once(tmp_path_factory, "mnist5k-captions", build)


def free_port() -> int:
    """A free TCP port on loopback (for a process-group rendezvous or a server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m bigtrain ARGS`` as a user would; fail with its output when it fails."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run(
        [*BIGTRAIN, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"bigtrain {' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc


# Small runs of each task: the debug config group (bigtrain/configs/debug/), as a user would check a pipeline.
TINY = ["debug=tiny_gan"]
TOKENIZER_SMALL = ("debug=tiny_tokenizer",)
PRIOR_SMALL = ("debug=tiny_prior",)
PIX2PIX_SMALL = ("debug=tiny_pix2pix",)
CYCLEGAN_SMALL = ("debug=tiny_cyclegan",)
TEXT_GAN_SMALL = ("debug=tiny_text_gan",)


@pytest.fixture(scope="session")
def small_tokenizer(mnist_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-step tokenizer checkpoint (stage 1), shared by the tokenizer and prior tests."""

    def build(out: Path) -> None:
        run_cli("train", "experiment=mnist_vqgan", f"data.path={mnist_shards}", f"run.dir={out / 'run'}",
                "tracking.enabled=false", *TOKENIZER_SMALL, "trainer.max_steps=2", "eval.enabled=false")  # fmt: skip

    return built_once(tmp_path_factory, "tok", build) / "run" / "checkpoints" / "step-00000002"


@pytest.fixture(scope="session")
def token_shards(small_tokenizer: Path, mnist_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits as 8x8 codes of ``small_tokenizer`` (``bigtrain tokenize``)."""

    def build(out: Path) -> None:
        run_cli(
            "tokenize", str(small_tokenizer), str(mnist_shards), str(out / "mnist5k-tokens"), "--workers", "1"
        )

    return built_once(tmp_path_factory, "tokens", build) / "mnist5k-tokens"


@pytest.fixture(scope="session")
def caption_tokens(
    small_tokenizer: Path, mnist_captions: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The captioned digits as codes of ``small_tokenizer``, captions carried along."""

    def build(out: Path) -> None:
        run_cli("tokenize", str(small_tokenizer), str(mnist_captions), str(out / "t"), "--workers", "1")

    return built_once(tmp_path_factory, "caption-tokens", build) / "t"


@pytest.fixture(scope="session")
def edge_tokens(small_tokenizer: Path, mnist_edges: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The (outline, digit) pairs as codes of ``small_tokenizer``: digits as tokens, outlines as
    condition codes."""

    def build(out: Path) -> None:
        run_cli("tokenize", str(small_tokenizer), str(mnist_edges), str(out / "t"), "--workers", "1")

    return built_once(tmp_path_factory, "edge-tokens", build) / "t"


def tiny_hf_encoder(out: Path) -> Path:
    """A randomly initialised 2-layer BERT and a word-piece tokenizer over the digit captions'
    words, saved as ``save_pretrained`` writes a downloaded one: a real local Hugging Face folder,
    made without a network."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "a", "an"]
    words += ["thick", "thin", "wide", "narrow", "upright", "left", "right", "slanted", "-", ","]
    vocab = out / "vocab.txt"
    out.mkdir(parents=True, exist_ok=True)
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(out)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(words) + 5,
        hidden_size=24,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
    )
    BertModel(config).save_pretrained(out)
    return out

"""Shared fixtures: real MNIST shards from the built-in digits, and a private bigtrain cache.

The cache (``BIGTRAIN_CACHE``) is one temporary folder per test session, exported to the
environment so CLI subprocesses share it: the digits feature network and FID reference statistics
are built once per session, as they would be once per machine for a user.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bigtrain.data.prepare import PrepareOptions, prepare

REPO = Path(__file__).resolve().parents[1]
BIGTRAIN = [sys.executable, "-m", "bigtrain"]


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("bigtrain-cache")
    old = os.environ.get("BIGTRAIN_CACHE")
    os.environ["BIGTRAIN_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("BIGTRAIN_CACHE", None)
    else:
        os.environ["BIGTRAIN_CACHE"] = old


@pytest.fixture(scope="session")
def mnist_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 5,000 built-in digits at 32x32: 4,500 train in 9 shards, 500 val."""
    out = tmp_path_factory.mktemp("mnist5k")
    prepare("builtin:mnist5k", out, PrepareOptions(resolution=32, samples_per_shard=500, progress=False))
    return out


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


# A DCGAN small enough that a CLI training step takes milliseconds on 2 cores.
TINY = [
    "model.g_width=8",
    "model.d_width=8",
    "model.z_dim=16",
    "data.batch_size=16",
    "data.num_workers=0",
    "data.shuffle_buffer=64",
    "trainer.progress=false",
    "trainer.log_every=5",
    "eval.num_samples=200",
    "eval.batch_size=100",
    "eval.ref_max_images=1000",
]


# A VQ-GAN tokenizer of a few thousand parameters (mnist_vqgan's shape, 32 codes, GAN on at step 3).
TOKENIZER_SMALL = (
    "data.batch_size=8",
    "data.num_workers=0",
    "data.shuffle_buffer=64",
    "model.arch.ch=8",
    "model.arch.groups=8",
    "model.arch.z_channels=8",
    "model.arch.embed_dim=8",
    "model.arch.num_codes=32",
    "model.arch.restart_after=2",
    "vq.disc_start=3",
    "vq.disc_width=8",
    "optim.schedule.name=constant",  # the resumed twins change max_steps, the cosine's horizon
    "trainer.ckpt_every=2",
    "trainer.sample_every=4",
    "trainer.log_every=1",
    "trainer.progress=false",
    "eval.every=4",
    "eval.num_samples=100",
    "eval.batch_size=50",
)


@pytest.fixture(scope="session")
def small_tokenizer(mnist_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-step tokenizer checkpoint (stage 1), shared by the tokenizer and prior tests."""
    run = tmp_path_factory.mktemp("tok") / "run"
    run_cli("train", "experiment=mnist_vqgan", f"data.path={mnist_shards}", f"run.dir={run}", "tracking.enabled=false",
            *TOKENIZER_SMALL, "trainer.max_steps=2", "eval.enabled=false")  # fmt: skip
    return run / "checkpoints" / "step-00000002"


@pytest.fixture(scope="session")
def token_shards(small_tokenizer: Path, mnist_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits as 8x8 codes of ``small_tokenizer`` (``bigtrain tokenize``)."""
    out = tmp_path_factory.mktemp("tokens") / "mnist5k-tokens"
    run_cli("tokenize", str(small_tokenizer), str(mnist_shards), str(out), "--workers", "1")
    return out

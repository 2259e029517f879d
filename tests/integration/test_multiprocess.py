"""Two processes on the CPU (gloo), launched with torchrun as on a cluster node: the ranks agree on
every network's weights, read disjoint samples, and the 2-rank checkpoint resumes exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CYCLEGAN_SMALL, PIX2PIX_SMALL, TEXT_GAN_SMALL, TINY, free_port, run_cli


def _torchrun(
    mnist: Path,
    run_dir: Path,
    *extra: str,
    experiment: str = "mnist_dcgan",
    debug: tuple[str, ...] = tuple(TINY),
) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        "bigtrain",
        "train",
        f"experiment={experiment}",
        f"data.path={mnist}",
        f"run.dir={run_dir}",
        "tracking.enabled=false",
        *debug,
        "data.record_keys=true",
        "trainer.ckpt_every=10",
        "eval.enabled=false",
        *extra,
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    return proc


@pytest.fixture(scope="module")
def two_rank_runs(mnist_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ddp")
    _torchrun(mnist_shards, root / "a", "trainer.max_steps=30")
    _torchrun(mnist_shards, root / "b", "trainer.max_steps=20")
    _torchrun(mnist_shards, root / "b", "trainer.max_steps=30")
    return root / "a", root / "b"


def test_ranks_agree_on_weights(two_rank_runs: tuple[Path, Path]) -> None:
    a, _ = two_rank_runs
    meta = json.loads((a / "checkpoints" / "step-00000030" / "meta.json").read_text())
    assert meta["world_size"] == 2
    rank0, rank1 = meta["rank_weight_digests"]
    assert set(rank0) == {"G", "D", "G_ema"} and rank0 == rank1
    assert {"rng.rank0", "rng.rank1", "data.rank0", "data.rank1"} <= set(meta["digests"])


def test_ranks_read_disjoint_samples(two_rank_runs: tuple[Path, Path]) -> None:
    a, _ = two_rank_runs
    keys = [(a / "data-keys" / f"rank-{r}.txt").read_text().split() for r in range(2)]
    assert len(keys[0]) == len(keys[1]) == 30 * 16  # 30 steps x batch 16, 1 D step each
    assert len(set(keys[0])) == len(keys[0]) and not set(keys[0]) & set(keys[1])


def test_two_rank_resume_is_exact(two_rank_runs: tuple[Path, Path]) -> None:
    a, b = two_rank_runs
    da = json.loads(run_cli("inspect", str(a / "checkpoints" / "step-00000030"), "--json").stdout)
    db = json.loads(run_cli("inspect", str(b / "checkpoints" / "step-00000030"), "--json").stdout)
    assert da["digests"] == db["digests"]
    # and the resumed run read the same samples as the uninterrupted one
    for r in range(2):
        assert (a / "data-keys" / f"rank-{r}.txt").read_text() == (
            b / "data-keys" / f"rank-{r}.txt"
        ).read_text()


def test_overlapped_gradient_averaging_trains_the_same_weights(
    mnist_shards: Path, two_rank_runs: tuple[Path, Path], tmp_path: Path
) -> None:
    """``trainer.grad_overlap=true`` (buckets sent during backward) on 2 ranks: every weight, the
    EMA's and the optimizers' state equal the flat all-reduce's run after 30 steps."""
    a, _ = two_rank_runs
    _torchrun(mnist_shards, tmp_path / "o", "trainer.max_steps=30", "trainer.grad_overlap=true",
              "trainer.grad_bucket_mb=0.01")  # fmt: skip
    da = json.loads(run_cli("inspect", str(a / "checkpoints" / "step-00000030"), "--json").stdout)
    do = json.loads(
        run_cli("inspect", str(tmp_path / "o" / "checkpoints" / "step-00000030"), "--json").stdout
    )
    for key in ("G", "D", "G_ema", "opt_G", "opt_D"):
        assert da["digests"][key] == do["digests"][key], key


BIGGAN_TINY = [
    "model.g_width=4",
    "model.d_width=4",
    "model.z_dim=16",
    "model.arch.shared_dim=8",
    "model.arch.cross_replica_bn=true",
    "loss.g_ortho=1e-4",
    "loss.d_steps=1",  # the preset takes 2; one keeps the test short
    "trainer.accumulation=2",
]


def _torchrun_biggan(mnist: Path, run_dir: Path, *extra: str) -> None:
    _torchrun(
        mnist,
        run_dir,
        *BIGGAN_TINY,
        "data.batch_size=8",
        "trainer.ckpt_every=3",
        *extra,
        experiment="mnist_biggan",
    )


# growing through 8 -> 16 -> 32 px: blocks above a stage have no gradient on either rank, and the
# checkpoint at step 3 is mid-fade (16 px, alpha 0.5); steps 5-6 run the whole network
GROWING = (
    "model.arch.grow=true",
    "stages.schedule=[{resolution: 8, steps: 2}, {resolution: 16, steps: 2, fade_steps: 2}, "
    "{resolution: 32, steps: 2, fade_steps: 1}]",
)


def test_biggan_two_ranks_cross_replica_bn_agree_and_resume_exactly(
    mnist_shards: Path, tmp_path: Path
) -> None:
    """BigGAN on 2 ranks with cross-replica BN, growing in resolution stages: ranks agree on G, D,
    EMA and BN statistics, and a checkpoint taken mid-fade resumes exactly."""
    _torchrun_biggan(mnist_shards, tmp_path / "a", "trainer.max_steps=6", *GROWING)
    _torchrun_biggan(mnist_shards, tmp_path / "b", "trainer.max_steps=3", *GROWING)
    _torchrun_biggan(mnist_shards, tmp_path / "b", "trainer.max_steps=6", *GROWING)
    meta = json.loads((tmp_path / "a" / "checkpoints" / "step-00000006" / "meta.json").read_text())
    rank0, rank1 = meta["rank_weight_digests"]
    assert set(rank0) == {"G", "D", "G_ema"} and rank0 == rank1  # weights and BN statistics agree
    mid = json.loads((tmp_path / "a" / "checkpoints" / "step-00000003" / "meta.json").read_text())
    assert mid["rank_weight_digests"][0] == mid["rank_weight_digests"][1]  # also mid-fade
    cfg = (tmp_path / "a" / "config.yaml").read_text()
    assert "cross_replica_bn: true" in cfg and "name: biggan" in cfg
    da = json.loads(
        run_cli("inspect", str(tmp_path / "a" / "checkpoints" / "step-00000006"), "--json").stdout
    )
    db = json.loads(
        run_cli("inspect", str(tmp_path / "b" / "checkpoints" / "step-00000006"), "--json").stdout
    )
    assert da["digests"] == db["digests"]
    keys = (tmp_path / "a" / "data-keys" / "rank-0.txt").read_text().split()
    assert len(keys) == 6 * 8 * 2  # 6 steps x batch 8 x 2 accumulated micro-batches, 1 D step


def test_tokenizer_two_ranks_keep_one_codebook(mnist_shards: Path, tmp_path: Path) -> None:
    """Two ranks train the VQ-GAN tokenizer (EMA codebook with dead-code restarts, PatchGAN from
    step 3): codebook statistics are summed over ranks and restarts take rank 0's choice, so the
    ranks' tokenizer and discriminator stay identical."""
    from tests.e2e.test_tokenizer_cli import SMALL

    _torchrun(mnist_shards, tmp_path / "run", *SMALL, "trainer.max_steps=4", "trainer.ckpt_every=4",
              experiment="mnist_vqgan")  # fmt: skip
    meta = json.loads((tmp_path / "run" / "checkpoints" / "step-00000004" / "meta.json").read_text())
    rank0, rank1 = meta["rank_weight_digests"]
    assert set(rank0) == {"vq", "D"} and rank0 == rank1
    assert meta["world_size"] == 2


def test_accelerate_launch_mixed_precision_reaches_the_run(mnist_shards: Path, tmp_path: Path) -> None:
    """``accelerate launch --mixed_precision bf16`` used to be ignored (bigtrain builds its own
    Accelerator): with ``trainer.precision=auto`` (the default) the run takes it and records it;
    a config naming another precision stops in one line."""
    accelerate = Path(sys.executable).with_name("accelerate")

    def launch(run: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(accelerate), "launch", "--num_processes", "1", "--num_machines", "1", "--dynamo_backend", "no",
               "--mixed_precision", "bf16", "-m", "bigtrain", "train", "experiment=mnist_dcgan",
               f"data.path={mnist_shards}", f"run.dir={run}", "tracking.enabled=false", *TINY,
               "trainer.max_steps=2", "eval.enabled=false", *extra]  # fmt: skip
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "HF_HOME": str(tmp_path / "hf"),
        }  # no user accelerate config
        return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)

    proc = launch(tmp_path / "bf16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "precision: bf16" in (tmp_path / "bf16" / "config.yaml").read_text()
    clash = launch(tmp_path / "clash", "trainer.precision=fp16")
    errors = [ln for ln in clash.stderr.splitlines() if ln.startswith("bigtrain: error:")]
    assert clash.returncode != 0 and errors == [
        "bigtrain: error: trainer.precision=fp16 but the launcher asks for bf16 (accelerate launch "
        "--mixed_precision / accelerate config, ACCELERATE_MIXED_PRECISION); make them agree, or set "
        "trainer.precision=auto to take the launcher's"
    ], clash.stderr[-3000:]


def test_global_batch_splits_over_torchrun_processes(mnist_shards: Path, tmp_path: Path) -> None:
    """``data.global_batch_size`` over 2 processes x 2 accumulations: 8 per process, recorded as
    such; each rank reads 2 steps x 2 micro-batches x 8 samples."""
    run = tmp_path / "run"
    _torchrun(mnist_shards, run, "data.batch_size=0", "data.global_batch_size=32", "trainer.accumulation=2",
              "trainer.max_steps=2")  # fmt: skip
    config = (run / "config.yaml").read_text()
    assert "batch_size: 8\n" in config and "global_batch_size: 32\n" in config
    for rank in (0, 1):
        assert len((run / "data-keys" / f"rank-{rank}.txt").read_text().split()) == 2 * 2 * 8


def test_evaluation_on_two_ranks_equals_one(mnist_shards: Path, tmp_path: Path) -> None:
    """``bigtrain evaluate`` under torchrun: each rank samples every other batch (each batch has its
    own seed) and the features are gathered, so FID, IS, precision/recall and KID equal one
    process's; 3 batches of 100, 100, 50 split unevenly over the 2 ranks."""
    run = tmp_path / "run"
    run_cli("train", "experiment=mnist_dcgan", f"data.path={mnist_shards}", f"run.dir={run}", "tracking.enabled=false",
            *TINY, "trainer.max_steps=3", "eval.enabled=false")  # fmt: skip
    ckpt = run / "checkpoints" / "step-00000003"
    args = ["evaluate", str(ckpt), "--num-samples", "250", "--no-log", "--device", "cpu",
            "--metric", "fid", "--metric", "is", "--metric", "pr", "--metric", "kid"]  # fmt: skip
    one = json.loads(run_cli(*args, env={"OMP_NUM_THREADS": "1"}).stdout.strip().splitlines()[-1])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "bigtrain", *args]  # fmt: skip
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    assert len(lines) == 1  # the main process prints
    two = json.loads(lines[0])
    assert set(two["metrics"]) == set(one["metrics"]) and len(one["metrics"]) == 6
    for key, value in one["metrics"].items():
        assert two["metrics"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def test_sample_export_on_two_ranks_equals_one(mnist_shards: Path, tmp_path: Path) -> None:
    """``bigtrain sample --npz --png-dir`` under torchrun: the ranks split the batches and the files
    are byte-identical to one process's (each batch has its own seed)."""
    run = tmp_path / "run"
    run_cli("train", "experiment=mnist_cdcgan", f"data.path={mnist_shards}", f"run.dir={run}", "tracking.enabled=false",
            *TINY, "trainer.max_steps=2", "eval.enabled=false")  # fmt: skip
    ckpt = run / "checkpoints" / "step-00000002"

    def sample(out: Path, *launcher: str) -> None:
        cmd = [*launcher, "-m", "bigtrain", "sample", str(ckpt), "--num-samples", "25", "--batch-size", "10", "--device", "cpu",
               "--npz", str(out / "s.npz"), "--png-dir", str(out / "png")]  # fmt: skip
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
        )
        assert proc.returncode == 0, proc.stderr[-4000:]

    sample(tmp_path / "one", sys.executable)
    sample(tmp_path / "two", sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()))  # fmt: skip
    a, b = (np.load(tmp_path / d / "s.npz") for d in ("one", "two"))
    assert a["arr_0"].shape == (25, 32, 32, 3) and np.array_equal(a["arr_0"], b["arr_0"])
    assert np.array_equal(a["arr_1"], b["arr_1"])
    names = sorted(p.name for p in (tmp_path / "two" / "png").iterdir())
    assert (
        names == sorted(p.name for p in (tmp_path / "one" / "png").iterdir()) and len(names) == 26
    )  # + labels.txt
    for name in names:
        assert (tmp_path / "one" / "png" / name).read_bytes() == (
            tmp_path / "two" / "png" / name
        ).read_bytes()
    assert not list(tmp_path.glob("*/*.part.npz"))  # the ranks' parts are gone


def _same_pair_of_runs(tmp_path: Path, networks: set[str], *, keys: bool = True) -> dict[str, str]:
    """Checks of a 6-step 2-rank run ``a`` and its twin ``b`` resumed at step 3: the ranks agree on
    ``networks``' weights, read disjoint samples (8 a step each, with ``keys``), and both runs end
    with the same checkpoint; returns its digests."""
    meta = json.loads((tmp_path / "a" / "checkpoints" / "step-00000006" / "meta.json").read_text())
    rank0, rank1 = meta["rank_weight_digests"]
    assert set(rank0) == networks and rank0 == rank1
    if keys:
        seen = [(tmp_path / "a" / "data-keys" / f"rank-{r}.txt").read_text().split() for r in range(2)]
        assert len(seen[0]) == len(seen[1]) == 6 * 8 and not set(seen[0]) & set(seen[1])
    da, db = (
        json.loads(run_cli("inspect", str(tmp_path / d / "checkpoints" / "step-00000006"), "--json").stdout)[
            "digests"
        ]
        for d in ("a", "b")
    )
    assert da == db
    return da


def test_pix2pix_trains_on_two_ranks_and_resumes_exactly(mnist_edges: Path, tmp_path: Path) -> None:
    """Paired batches split over 2 ranks (the source and target of a sample stay together), the
    ranks' G and D agree, the 2-rank resume is exact, and the main process evaluates alone."""
    run = lambda d, steps: _torchrun(  # noqa: E731
        mnist_edges, tmp_path / d, f"trainer.max_steps={steps}", "trainer.ckpt_every=3",
        "eval.enabled=true", "eval.every=6", experiment="mnist_pix2pix", debug=PIX2PIX_SMALL,
    )  # fmt: skip
    straight = run("a", 6)
    assert "eval/l1" in straight.stderr  # evaluated by the main process alone (pairs read in order)
    run("b", 3)
    run("b", 6)
    _same_pair_of_runs(tmp_path, {"G", "D"})


def test_cyclegan_trains_on_two_ranks_and_resumes_exactly(mnist_domains: Path, tmp_path: Path) -> None:
    """Both domains' batches split over 2 ranks, each rank with its own history of generated images
    (checkpointed per rank), the ranks' networks agree and the 2-rank resume is exact."""
    run = lambda d, steps: _torchrun(  # noqa: E731
        mnist_domains, tmp_path / d, f"trainer.max_steps={steps}", "trainer.ckpt_every=3",
        experiment="mnist_cyclegan", debug=CYCLEGAN_SMALL,
    )  # fmt: skip
    run("a", 6)
    run("b", 3)
    run("b", 6)
    digests = _same_pair_of_runs(tmp_path, {"G_AB", "G_BA", "D_A", "D_B"}, keys=False)
    assert {"task_rank.rank0", "task_rank.rank1"} <= set(digests)
    assert digests["task_rank.rank0"] != digests["task_rank.rank1"]  # each rank's own history


def test_text_gan_trains_on_two_ranks_and_resumes_exactly(mnist_captions: Path, tmp_path: Path) -> None:
    """Captioned batches split over 2 ranks (each rank's captions stay with its images), the ranks
    agree on G, D and the text encoder (trained with D's optimizer, gradients averaged), the 2-rank
    resume is exact, and the main process evaluates alone (the captions are sampled in order)."""
    run = lambda d, steps: _torchrun(  # noqa: E731
        mnist_captions, tmp_path / d, f"trainer.max_steps={steps}", "trainer.ckpt_every=3",
        "eval.enabled=true", "eval.every=6", experiment="mnist_text_gan", debug=TEXT_GAN_SMALL,
    )  # fmt: skip
    straight = run("a", 6)
    assert "attribute_agreement/thickness" in straight.stderr and "class_agreement/digits" in straight.stderr
    run("b", 3)
    run("b", 6)
    _same_pair_of_runs(tmp_path, {"G", "D", "text", "G_ema"})


@pytest.mark.parametrize(
    "preset",
    [
        ("experiment=mnist_pixelcnn", "model.arch.layers=2", "ema.enabled=true"),
        ("experiment=mnist_pixelrnn", "model.arch.layers=1"),
        ("experiment=mnist_vae", "density.iw_samples=4"),
    ],
    ids=["pixelcnn-ema", "pixelrnn", "vae"],
)
def test_likelihood_trains_on_two_ranks_and_resumes_exactly(
    mnist_shards: Path, tmp_path: Path, preset: tuple[str, ...]
) -> None:
    """Each density family on 2 ranks (the PixelCNN with an EMA copy): the ranks agree on the
    networks, read disjoint samples, the 2-rank resume is exact, and the evaluation (samples split
    over the ranks, the likelihood on the main process) reports bits/dim."""
    experiment = preset[0].split("=", 1)[1]
    run = lambda d, steps: _torchrun(  # noqa: E731
        mnist_shards, tmp_path / d, f"trainer.max_steps={steps}", "trainer.ckpt_every=3",
        "eval.enabled=true", "eval.every=6", *preset[1:], experiment=experiment,
        debug=("debug=tiny_likelihood",),
    )  # fmt: skip
    straight = run("a", 6)
    assert "nll/" in straight.stderr and "fid/digits" in straight.stderr
    run("b", 3)
    run("b", 6)
    _same_pair_of_runs(tmp_path, {"net", "net_ema"} if "ema.enabled=true" in preset else {"net"})
    grid = tmp_path / "grid.png"  # and the CLI samples from the 2-rank checkpoint
    run_cli(
        "sample", str(tmp_path / "a" / "checkpoints" / "step-00000006"), "--rows", "2", "--out", str(grid)
    )
    assert grid.is_file()

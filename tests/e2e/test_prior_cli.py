"""Stage 2 as a user runs it: `bigtrain train experiment=mnist_transformer` on token shards from
`bigtrain tokenize`, with DeepSpeed's engine (ZeRO-2 in one process and under torchrun with 2
ranks, ZeRO-3 with 2 ranks). Each run is compared with an interrupted-and-resumed twin through
`bigtrain inspect` digests, which include DeepSpeed's own checkpoint files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from tests.conftest import PRIOR_SMALL, free_port, run_cli

LR = 1e-3  # mnist_transformer's optim.prior.lr


def _digests(run: Path, step: int) -> dict[str, str]:
    ck = run / "checkpoints" / f"step-{step:08d}"
    return json.loads(run_cli("inspect", str(ck), "--json").stdout)["digests"]


def _twins(run: Callable[..., object], common: tuple[str, ...], tmp_path: Path) -> tuple[Path, dict, dict]:
    """A 4-step run and its twin interrupted after step 2 and resumed: (run dir, both digests)."""
    straight, resumed = tmp_path / "a", tmp_path / "b"
    run(*common, f"run.dir={straight}", "trainer.max_steps=4")
    run(*common, f"run.dir={resumed}", "trainer.max_steps=2")
    run(*common, f"run.dir={resumed}", "trainer.max_steps=4")
    return straight, _digests(straight, 4), _digests(resumed, 4)


def _torchrun(*args: str) -> None:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), "-m", "bigtrain", *args,
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode == 0, proc.stderr[-5000:]


def test_prior_trains_samples_evaluates_and_resumes_exactly(token_shards: Path, tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    common = ("train", "experiment=mnist_transformer", f"data.path={token_shards}",
              f"tracking.uri=sqlite:///{db}", "eval.every=4", *PRIOR_SMALL)  # fmt: skip
    straight, a, b = _twins(run_cli, common, tmp_path)
    assert {"prior", "task", "deepspeed/mp_rank_00_model_states", "deepspeed/zero_pp_rank_0_mp_rank_00_optim_states"} <= set(a)  # fmt: skip
    assert a == b
    ck = straight / "checkpoints" / "step-00000004"
    assert (ck / "zero_to_fp32.py").is_file()  # DeepSpeed's converter travels with its files

    meta = json.loads((ck / "meta.json").read_text())
    client = MlflowClient(f"sqlite:///{db}")
    run_id = meta["mlflow_run_id"]
    lr = [h.value for h in sorted(client.get_metric_history(run_id, "lr/prior"), key=lambda h: h.step)]
    assert lr == [LR / 3, 2 * LR / 3, LR, LR]  # linear warm-up over 3 steps, then constant
    m = client.get_run(run_id).data.metrics
    assert m["loss/prior"] > 0 and m["fid/digits"] > 0 and "recall/digits" in m
    assert m["tokens_per_s"] == pytest.approx(m["img_per_s"] * 64)  # 8 x 8 codes per digit
    # the run's "Logged models": one each time a leg of it finished (the first run, its resume, ...)
    every = client.search_logged_models(experiment_ids=[client.get_run(run_id).info.experiment_id])
    models = [m for m in every if m.source_run_id == run_id]
    assert models and all(m.name == "model" for m in models)
    for model in models:
        assert {"MLmodel", "data"} <= {a.path for a in client.list_logged_model_artifacts(model.model_id)}
    # one row of 4 samples per class: 10 rows of 32-pixel digits decoded by the tokenizer
    assert Image.open(straight / "samples" / "step-00000004.png").size == (4 * 34 + 2, 10 * 34 + 2)

    out = tmp_path / "per-class.png"
    run_cli(
        "sample", str(ck), "--out", str(out), "--per-class", "--rows", "3", "--cfg-scale", "2", "--top-k", "8"
    )
    assert Image.open(out).size == (3 * 34 + 2, 10 * 34 + 2)
    again = tmp_path / "again.png"
    run_cli(
        "sample",
        str(ck),
        "--out",
        str(again),
        "--per-class",
        "--rows",
        "3",
        "--cfg-scale",
        "2",
        "--top-k",
        "8",
    )
    assert out.read_bytes() == again.read_bytes()  # seeded
    bad = run_cli("sample", str(ck), "--out", str(out), "--class", "12", check=False)
    assert bad.returncode == 2 and "out of range" in bad.stderr
    result = json.loads(run_cli("evaluate", str(ck), "--num-samples", "50").stdout.strip().splitlines()[-1])
    assert result["metric"] == "fid/digits/n50" and result["value"] > 0


def test_prior_two_ranks_zero2_agree_and_resume_exactly(token_shards: Path, tmp_path: Path) -> None:
    common = ("train", "experiment=mnist_transformer", f"data.path={token_shards}", "tracking.enabled=false",
              "eval.enabled=false", "trainer.accumulation=2", *PRIOR_SMALL)  # fmt: skip
    straight, a, b = _twins(_torchrun, common, tmp_path)
    assert {f"deepspeed/zero_pp_rank_{r}_mp_rank_00_optim_states" for r in (0, 1)} <= set(a)
    assert a == b
    meta = json.loads((straight / "checkpoints" / "step-00000004" / "meta.json").read_text())
    rank0, rank1 = meta["rank_weight_digests"]
    assert rank0 == rank1 == {"prior": a["prior"]}  # ZeRO-2 keeps whole (identical) weights per rank

    # ZeRO's optimizer state is split over 2 ranks: one process refuses it in one line
    proc = run_cli(*common, f"run.dir={straight}", "trainer.max_steps=5", check=False)
    assert proc.returncode == 2
    assert "partitioned over 2 ranks; resume with 2 ranks" in proc.stderr.strip().splitlines()[-1]


def test_prior_two_ranks_zero3_gather_for_sampling_and_resume_exactly(
    token_shards: Path, tmp_path: Path
) -> None:
    common = ("train", "experiment=mnist_transformer", f"data.path={token_shards}", "tracking.enabled=false",
              "prior.zero_stage=3", "eval.every=4", *PRIOR_SMALL)  # fmt: skip
    straight, a, b = _twins(_torchrun, common, tmp_path)
    # ZeRO-3 partitions the parameters too: each rank writes its own model-states file
    assert {f"deepspeed/zero_pp_rank_{r}_mp_rank_00_model_states" for r in (0, 1)} <= set(a)
    assert a == b
    # the gathered weights sampled grids and FID while the ranks were partitioned
    assert (straight / "samples" / "step-00000002.png").is_file()
    meta = json.loads((straight / "checkpoints" / "step-00000004" / "meta.json").read_text())
    trainer = json.loads(run_cli("inspect", str(straight / "checkpoints" / "step-00000004"), "--json").stdout)
    assert trainer["step"] == 4 and meta["world_size"] == 2
    log = (straight / "train.log").read_text()
    assert "step 4: fid/digits = " in log


def test_prior_data_and_tokenizer_mismatches_are_one_line(
    token_shards: Path, mnist_shards: Path, tmp_path: Path
) -> None:
    base = ("train", f"run.dir={tmp_path / 'r'}", "tracking.enabled=false", *PRIOR_SMALL)
    proc = run_cli(*base, "experiment=mnist_transformer", f"data.path={mnist_shards}", check=False)
    assert proc.returncode == 2 and "task=prior trains on token shards (bigtrain tokenize)" in proc.stderr
    proc = run_cli("train", f"run.dir={tmp_path / 'r'}", "tracking.enabled=false", "experiment=mnist_dcgan",
                   f"data.path={token_shards}", check=False)  # fmt: skip
    assert proc.returncode == 2 and "token shards are for task=prior" in proc.stderr

    # token shards whose dataset.json names another tokenizer: sampling refuses to decode them
    other = tmp_path / "tokens"
    shutil.copytree(token_shards, other)
    manifest = json.loads((other / "dataset.json").read_text())
    manifest["tokenizer"]["digest"] = "0" * 64
    (other / "dataset.json").write_text(json.dumps(manifest))
    proc = run_cli(*base, "experiment=mnist_transformer", f"data.path={other}", "trainer.max_steps=2",
                   "eval.enabled=false", check=False)  # fmt: skip
    assert proc.returncode == 2 and "is not the one that made these tokens" in proc.stderr


def test_prior_trains_in_bf16_with_deepspeed(token_shards: Path, tmp_path: Path) -> None:
    run = tmp_path / "bf16"
    run_cli("train", "experiment=mnist_transformer", f"data.path={token_shards}", f"run.dir={run}",
            "tracking.enabled=false", "eval.enabled=false", "trainer.precision=bf16", "trainer.max_steps=2",
            *PRIOR_SMALL)  # fmt: skip
    import torch

    weights = torch.load(run / "checkpoints" / "step-00000002" / "prior.pt", weights_only=True)
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.bfloat16}
    assert "step 2/2: prior " in (run / "train.log").read_text()
    # DeepSpeed keeps fp32 master weights in its optimizer partition, which the checkpoint holds
    (optim,) = (run / "checkpoints" / "step-00000002" / "deepspeed").glob("*zero_pp_rank_0_*optim_states.pt")
    assert f"deepspeed/{optim.stem}" in _digests(run, 2)  # DeepSpeed names it bf16_zero_pp_rank_0_...
    state = torch.load(optim, weights_only=False)["optimizer_state_dict"]
    assert {t.dtype for t in state["single_partition_of_fp32_groups"]} == {torch.float32}


def test_pixelcnn_prior_trains_on_the_same_tokens_resumes_exactly_and_samples(
    token_shards: Path, tmp_path: Path
) -> None:
    """model=pixelcnn_prior (the VQ-VAE paper's prior) through task=prior: the same token shards,
    step, evaluation and sampling as the transformer's, with the plain PyTorch engine."""
    common = ("train", "experiment=mnist_pixelcnn_prior", f"data.path={token_shards}", "tracking.enabled=false",
              "eval.every=4", "debug=tiny_pixelcnn_prior")  # fmt: skip
    straight, a, b = _twins(run_cli, common, tmp_path)
    assert {"prior", "opt_prior", "task"} <= set(a) and a == b
    ck = straight / "checkpoints" / "step-00000004"
    assert Image.open(straight / "samples" / "step-00000004.png").size == (4 * 34 + 2, 10 * 34 + 2)
    out = tmp_path / "twice.png"
    run_cli(
        "sample", str(ck), "--out", str(out), "--per-class", "--class", "3", "--rows", "2", "--size", "2x"
    )
    assert Image.open(out).size == (2 * 66 + 2, 66 + 2)  # a 16x16 code grid through the sliding window
    # exported as any prior is, and loaded back by bigtrain.load
    exported = json.loads(
        run_cli("export", str(ck), str(tmp_path / "export")).stdout.strip().splitlines()[-1]
    )
    assert exported["kind"] == "prior" and exported["model"] == "pixelcnn_prior"
    import bigtrain

    images = bigtrain.load(tmp_path / "export").generate(2, [3], seed=0)
    assert images.shape == (2, 1, 32, 32)

"""The prior's pieces in-process: the learning-rate schedule, the token stream, the plain-PyTorch
step (accumulation, the non-finite policies, AdamW groups), and DeepSpeed dropping a non-finite
update (in a subprocess: DeepSpeed's process group must not outlive the test)."""

from __future__ import annotations

import io
import math
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from omegaconf import OmegaConf

from bigtrain.data.manifest import DatasetManifest, ShardInfo
from bigtrain.data.stream import DataStream, StreamSpec
from bigtrain.errors import NonFiniteLossError
from bigtrain.train.engines import param_groups
from bigtrain.train.optim import lr_factor
from bigtrain.train.tasks.prior import PriorTask
from tests.conftest import REPO, compose, cpu


def test_schedule_warms_up_then_decays_to_the_floor() -> None:
    cos = OmegaConf.create({"name": "cosine", "warmup_steps": 10, "min_lr_ratio": 0.1})
    assert [lr_factor(s, cos, 110) for s in (1, 5, 10)] == [0.1, 0.5, 1.0]
    assert lr_factor(60, cos, 110) == pytest.approx(0.55)  # half-way down the cosine
    assert lr_factor(110, cos, 110) == pytest.approx(0.1) and lr_factor(500, cos, 110) == pytest.approx(0.1)
    lin = OmegaConf.create({"name": "linear", "warmup_steps": 0, "min_lr_ratio": 0.0})
    assert [lr_factor(s, lin, 100) for s in (0, 50, 100)] == [1.0, 0.5, 0.0]
    const = OmegaConf.create({"name": "constant", "warmup_steps": 4, "min_lr_ratio": 0.0})
    assert [lr_factor(s, const, 100) for s in (2, 4, 99)] == [0.5, 1.0, 1.0]
    # pix2pix / CycleGAN: constant for the first half, then linear to 0
    held = OmegaConf.create({"name": "linear", "warmup_steps": 0, "min_lr_ratio": 0.0, "decay_start": 50})
    assert [lr_factor(s, held, 100) for s in (1, 50, 75, 100)] == [1.0, 1.0, 0.5, 0.0]


def _token_dataset(root: Path, n: int = 40, grid: int = 4, vocab: int = 16) -> DatasetManifest:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with wds.TarWriter(str(root / "train-000000.tar")) as sink:
        for i in range(n):
            buf = io.BytesIO()
            np.save(buf, rng.integers(0, vocab, (grid, grid)).astype(np.uint16))
            sink.write({"__key__": f"{i:05d}", "tokens.npy": buf.getvalue(), "cls": str(i % 10).encode()})
    m = DatasetManifest(
        root, "toy-tokens", 16, 1, [str(i) for i in range(10)],
        {"train": [ShardInfo("train-000000.tar", n, "x")]},
        {"kind": "tokens", "tokens": {"grid": [grid, grid], "vocab": vocab, "dtype": "uint16"}},
    )  # fmt: skip
    m.write()
    return m


def test_token_stream_gives_flat_codes_and_labels_in_raster_order(tmp_path: Path) -> None:
    m = _token_dataset(tmp_path / "toks")
    spec = StreamSpec(tuple(m.shard_paths("train")), batch_size=8, resolution=16, channels=1,
                      shuffle_buffer=1, kind="tokens")  # fmt: skip
    batch = next(iter(DataStream(spec)))
    assert batch["tokens"].shape == (8, 16) and batch["tokens"].dtype == torch.int64
    first = next(iter(wds.WebDataset(m.shard_paths("train"), shardshuffle=False)))
    expected = np.load(io.BytesIO(first["tokens.npy"])).reshape(-1)
    assert batch["tokens"][0].tolist() == expected.tolist() and batch["label"][0] == 0
    assert "image" not in batch


def _task(manifest: DatasetManifest, *overrides: str) -> PriorTask:
    cfg = compose("experiment=mnist_transformer", f"data.path={manifest.root}", "prior.engine=torch",
                  "model.arch.dim=16", "model.arch.layers=1", "model.arch.heads=2", "data.batch_size=4",
                  *overrides)  # fmt: skip
    torch.manual_seed(0)
    return PriorTask(cfg, manifest, torch.device("cpu"), cpu())


def _batches(vocab: int = 16) -> Iterator[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    while True:
        yield {
            "tokens": torch.randint(0, vocab, (4, 16), generator=g),
            "label": torch.randint(0, 10, (4,), generator=g),
        }


def test_torch_engine_step_accumulates_and_follows_the_schedule(tmp_path: Path) -> None:
    task = _task(_token_dataset(tmp_path / "t"), "trainer.accumulation=2", "optim.schedule.warmup_steps=4")
    data = _batches()
    m1 = task.train_step(1, data)
    m2 = task.train_step(2, data)
    assert m1["lr/prior"] == pytest.approx(1e-3 / 4) and m2["lr/prior"] == pytest.approx(1e-3 / 2)
    assert task.images_per_step() == 8 and math.isfinite(m2["loss/prior"])
    assert task.engine.update.optimizer.state_dict()["state"][0]["step"] == 2  # type: ignore[union-attr]
    decay, rest = param_groups(task.model, 0.05)
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in rest["params"])
    assert decay["weight_decay"] == 0.05 and rest["weight_decay"] == 0.0


def test_llamagen_block_trains_with_its_dropouts_and_decay_groups(tmp_path: Path) -> None:
    """``model.arch.block=llama`` (imagenet256_gpt_b's) through the task: dropout active in training
    (two forwards differ), RMSNorm gains outside weight decay, the loss falls on a fixed batch."""
    llama = ("model.arch.block=llama", "model.arch.positions=rope2d", "model.arch.dropout=0.1",
             "model.arch.token_dropout=0.1", "optim.schedule.warmup_steps=0")  # fmt: skip
    task = _task(_token_dataset(tmp_path / "t"), *llama)
    batch = next(_batches())
    tokens, labels = batch["tokens"], batch["label"]
    assert torch.count_nonzero(task.model.head.weight) == 0  # LlamaGen's zero head: all codes equally likely
    decay, rest = param_groups(task.model, 0.05)
    assert {id(p) for p in rest["params"]} == {id(p) for n, p in task.model.named_parameters() if "ln" in n}
    first = task.train_step(1, iter([batch] * 1))["loss/prior"]
    for step in range(2, 30):
        last = task.train_step(step, iter([batch]))["loss/prior"]
    assert last < first - 0.1  # ln(16) = 2.77 at the zero head
    task.model.train()
    assert not torch.equal(task.model(tokens[:, :-1], labels), task.model(tokens[:, :-1], labels))  # dropout


def test_torch_engine_nonfinite_policies(tmp_path: Path) -> None:
    m = _token_dataset(tmp_path / "t")
    task = _task(m, "trainer.on_nonfinite=skip", "trainer.max_nonfinite_skips=1")
    data = _batches()
    with torch.no_grad():
        saved = task.model.head.weight[0, 0].item()
        task.model.head.weight[0, 0] = float("nan")
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    out = task.train_step(1, data)
    assert out["train/nonfinite_skips"] == 1 and "loss/prior" not in out
    after = task.model.state_dict()
    assert all(torch.equal(before[k].nan_to_num(), after[k].nan_to_num()) for k in before)  # not applied
    with pytest.raises(NonFiniteLossError, match="non-finite prior loss at step 2"):
        task.train_step(2, data)  # a second in a row exceeds max_nonfinite_skips=1
    with torch.no_grad():
        task.model.head.weight[0, 0] = saved
    stop = _task(m)
    with torch.no_grad():
        stop.model.head.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteLossError):
        stop.train_step(1, _batches())


DEEPSPEED_SKIP = """
import torch, numpy as np
from pathlib import Path
from bigtrain.train.compose import compose_config
from bigtrain.data.manifest import DatasetManifest
from bigtrain.distributed import LocalAccelerator
from bigtrain.train.tasks.prior import PriorTask
m = DatasetManifest.load(sys.argv[1])
cfg = compose_config(["experiment=mnist_transformer", "data.path=x", "model.arch.dim=16",
    "model.arch.layers=1", "model.arch.heads=2", "data.batch_size=4", "trainer.on_nonfinite=skip",
    "prior.zero_stage=" + sys.argv[3]])
task = PriorTask(cfg, m, torch.device("cpu"), LocalAccelerator("cpu"))
g = torch.Generator().manual_seed(1)
def data():
    while True:
        yield {"tokens": torch.randint(0, 16, (4, 16), generator=g), "label": torch.randint(0, 10, (4,), generator=g)}
d = data()
good = task.train_step(1, d)
eng = task.engine.engine()
with torch.no_grad():
    task.model.head.weight[0, 0] = float("nan")
before = {k: v.clone() for k, v in task.model.state_dict().items()}
bad = task.train_step(2, d)
same = all(torch.equal(before[k].nan_to_num(), v.nan_to_num()) for k, v in task.model.state_dict().items())
print("RESULT", "loss/prior" in good, "loss/prior" in bad, bad["train/nonfinite_skips"], same, eng.skipped_steps)
torch.distributed.barrier()  # as the trainer ends: gloo's threads must not outlive the group
torch.distributed.destroy_process_group()
"""


@pytest.mark.slow  # seconds: trains, spawns a process or reads weights
def test_deepspeed_drops_a_nonfinite_update_under_skip(tmp_path: Path) -> None:
    m = _token_dataset(tmp_path / "t")
    code = "import sys\n" + textwrap.dedent(DEEPSPEED_SKIP)
    proc = subprocess.run(
        [sys.executable, "-c", code, str(m.root), str(REPO), "2"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")][-1]
    # the good step trained; the NaN step was reported, counted, and DeepSpeed skipped the update
    assert result == "RESULT True False 1.0 True 1"

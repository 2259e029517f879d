"""``bigtrain doctor [OVERRIDES] [--json] [--quick]``: what a run with these overrides will need, and
what is missing, before a job waits hours in a queue to find out.

Reports the software (torch, CUDA, NCCL, GPUs, DeepSpeed ops, the libraries bigtrain drives), the
weights the run will load from the cache (Inception for FID; LPIPS's VGG16 for VQ-GAN presets),
the dataset (``dataset.json``, every shard present with its SHA-256 unless ``--quick``), the run
folder (writable, free space), the MLflow store (reachable and writable) and the SLURM job. Exit
code 1 when something the run requires is missing (a check marked ``fail``); ``warn`` lines are
advice.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from bigtrain.data import urls
from bigtrain.data.urls import is_url
from bigtrain.train.compose import compose_config
from bigtrain.utils.console import bar_disable

FREE_SPACE_WARN_GIB = 5.0


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail | info
    detail: str


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def check_software() -> list[Check]:
    import torch

    out = [Check("python", "ok", f"{platform.python_version()} ({sys.executable})")]
    out.append(Check("torch", "ok", f"{torch.__version__}"))
    if torch.cuda.is_available():
        names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
        nccl = ".".join(map(str, torch.cuda.nccl.version())) if hasattr(torch.cuda, "nccl") else "?"
        out.append(
            Check(
                "cuda",
                "ok",
                f"CUDA {torch.version.cuda}, NCCL {nccl}, {torch.cuda.device_count()} x {', '.join(names)}",
            )
        )
    else:
        out.append(
            Check(
                "cuda",
                "info",
                f"no GPU visible (torch built for CUDA {torch.version.cuda}); training runs on the CPU",
            )
        )
    for dist, why in [
        ("accelerate", "devices, mixed precision, process group"),
        ("webdataset", "reading shards"),
        ("hydra-core", "configs"),
        ("mlflow", "tracking"),
        ("clean-fid", "FID"),
    ]:
        v = _version(dist)
        out.append(
            Check(
                dist,
                "ok" if v else "fail",
                f"{v} ({why})" if v else f"not installed: pip install {dist} ({why})",
            )
        )
    out.append(check_deepspeed())
    return out


def check_deepspeed() -> Check:
    """DeepSpeed is needed by the transformer prior only; its compiled ops matter on GPUs."""
    v = _version("deepspeed")
    if v is None:
        return Check(
            "deepspeed", "warn", "not installed (only the ZeRO-trained prior needs it): pip install deepspeed"
        )
    from bigtrain.distributed.zero import prebuilt_ops

    try:
        built = prebuilt_ops()
        ops = (
            f"prebuilt ops: {', '.join(built)}"
            if built
            else "no prebuilt ops (JIT-compiled on first use; DS_BUILD_OPS=1 at install prebuilds them)"
        )
    except Exception as exc:  # noqa: BLE001 - a broken install is worth a line, not a crash
        return Check("deepspeed", "warn", f"{v}, but its op table does not load: {type(exc).__name__}: {exc}")
    return Check("deepspeed", "ok", f"{v}; {ops}")


def check_weights(cfg: DictConfig) -> list[Check]:
    from bigtrain.eval.features import inception_weights_path, vgg16_weights_path

    out = []
    inception = inception_weights_path()
    needs_inception = bool(cfg.eval.enabled) and cfg.eval.feature == "inception"
    if inception.exists():
        out.append(Check("fid_weights", "ok", f"{inception} ({inception.stat().st_size / 2**20:.0f} MiB)"))
    else:
        fix = (
            'fill it once: python -c "from cleanfid.inception_torchscript import InceptionV3W; '
            f"InceptionV3W('{inception.parent}', download=True)\""
        )
        status = "fail" if needs_inception else "info"
        why = (
            "this run's FID needs it" if needs_inception else f"not needed (eval.feature={cfg.eval.feature})"
        )
        out.append(Check("fid_weights", status, f"{inception} absent; {why}; {fix}"))
    vgg = vgg16_weights_path()
    metrics = cfg.eval.get("metrics") or []
    needs_vgg = (
        bool(cfg.eval.enabled)
        and str(cfg.eval.get("pr_feature") or "") == "vgg16"
        and (not metrics or "pr" in metrics)
    )
    status = "ok" if vgg.exists() else ("fail" if needs_vgg else "info")
    why = (
        "this run's precision/recall needs it (eval.pr_feature=vgg16)"
        if needs_vgg
        else "only the VQ-GAN perceptual loss and eval.pr_feature=vgg16 need it"
    )
    out.append(Check("lpips_weights", status, f"{vgg} {'present' if vgg.exists() else f'absent ({why})'}"))
    return out


def _sha256(loc: str, bar: tqdm, storage: dict[str, Any]) -> str:
    h = hashlib.sha256()
    with urls.open_stream(loc, storage) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            bar.update(len(block))
    return h.hexdigest()


def check_dataset(cfg: DictConfig, verify_checksums: bool) -> list[Check]:
    from bigtrain.config.validate import missing_values
    from bigtrain.data.manifest import DatasetError, DatasetManifest

    missing = missing_values(cfg)
    if missing:
        return [Check("config", "fail", "; ".join(missing))]
    try:
        manifest = DatasetManifest.load(cfg.data.path)
    except DatasetError as exc:
        return [Check("dataset", "fail", str(exc))]
    split = cfg.data.split
    shards = manifest.splits.get(split, [])
    info = f"{manifest.root}: {manifest.count(split) if shards else 0} '{split}' images in {len(shards)} shards, {manifest.resolution}px x{manifest.channels}, {manifest.num_classes} classes"
    if not shards:
        return [Check("dataset", "fail", f"{manifest.root} has no '{split}' shards")]
    locs = [manifest.location(s) for s in shards]
    missing = [loc for loc in locs if not is_url(loc) and not Path(loc).exists()]
    if missing:
        return [Check("dataset", "fail", f"{info}; missing shard(s): {', '.join(missing[:5])}")]
    remote = [loc for loc in locs if is_url(loc)]
    if remote:
        # one request, not thousands: the first remote shard answers, or the run would fail at once
        storage = OmegaConf.to_container(cfg.data.storage_options)
        try:
            size = urls.size(remote[0], storage)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - whatever the network says, shown to the user
            return [Check("dataset", "fail", f"{info}; {remote[0]} unreachable: {type(exc).__name__}: {exc}")]
        info += f"; {len(remote)} remote, the first answers ({size if size is not None else '?'} bytes)"
    out = [Check("dataset", "ok", info)]
    if verify_checksums:
        storage = OmegaConf.to_container(cfg.data.storage_options)
        total = sum(s.bytes or 0 for s in shards) or None
        bad = []
        unchecked = 0
        with tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            desc="checksums",
            file=sys.stderr,
            leave=False,
            disable=bar_disable(True),
        ) as bar:
            for s, loc in zip(shards, locs, strict=True):
                if not s.sha256:
                    unchecked += 1  # a remote shard indexed without --digests
                    continue
                if _sha256(loc, bar, storage) != s.sha256:  # type: ignore[arg-type]
                    bad.append(s.file)
        status, detail = (
            ("ok", f"{len(shards) - unchecked} shards match dataset.json")
            if not bad
            else ("fail", f"SHA-256 differs from dataset.json: {', '.join(bad[:5])}")
        )
        if unchecked:
            detail += f" ({unchecked} without a recorded digest: bigtrain index --digests yes records them)"
        out.append(Check("checksums", status, detail))
    return out


def check_run_dir(cfg: DictConfig) -> Check:
    run_dir = Path(cfg.run.dir)
    probe_dir = run_dir if run_dir.exists() else next((p for p in run_dir.parents if p.exists()), Path("."))
    try:
        with tempfile.NamedTemporaryFile(dir=probe_dir, prefix=".bigtrain-doctor-"):
            pass
    except OSError as exc:
        return Check("run_dir", "fail", f"{run_dir}: cannot write in {probe_dir} ({exc.strerror})")
    free = shutil.disk_usage(probe_dir).free / 2**30
    status = "warn" if free < FREE_SPACE_WARN_GIB else "ok"
    return Check(
        "run_dir",
        status,
        f"{run_dir} (writable; {free:.1f} GiB free{'' if status == 'ok' else ': checkpoints may not fit'})",
    )


def check_tracking(cfg: DictConfig) -> Check:
    if not cfg.tracking.enabled:
        return Check("mlflow", "info", "tracking disabled")
    backend = str(cfg.tracking.get("backend", "mlflow"))
    if backend != "mlflow":  # tensorboard, wandb: an optional extra, writing under run.dir
        v = _version(backend)
        if v is None:
            return Check(backend, "fail", f"tracking={backend} needs it: pip install 'bigtrain[{backend}]'")
        where = f"{cfg.run.dir}/{backend}"
        mode = f", {cfg.tracking.wandb.mode}" if backend == "wandb" else ""
        return Check(backend, "ok", f"{v} (tracking; {where}{mode})")
    uri = str(cfg.tracking.uri)
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as r:
                body = r.read(64).decode(errors="replace").strip()
            return Check("mlflow", "ok", f"{uri} answers /health: {body}")
        except OSError as exc:
            return Check(
                "mlflow",
                "fail",
                f"{uri} is not reachable ({exc}); start it with `mlflow server ...` or fix tracking.uri",
            )
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :]).expanduser()
        folder = db.parent if db.parent != Path("") else Path(".")
        if folder.exists() and os.access(folder, os.W_OK):
            return Check("mlflow", "ok", f"{uri} ({'exists' if db.exists() else 'will be created'})")
        return Check("mlflow", "fail", f"{uri}: folder {folder} missing or not writable")
    return Check("mlflow", "info", f"{uri} (not checked)")


def check_slurm() -> Check:
    from bigtrain.distributed import slurm

    if not slurm.in_slurm_job():
        where = "scontrol found" if shutil.which("scontrol") else "no SLURM client on this host"
        return Check("slurm", "info", f"not inside a SLURM job ({where})")
    env = os.environ
    fields = {
        "job": slurm.job_id(),
        "nodes": env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES"),
        "tasks": env.get("SLURM_NTASKS"),
        "gpus on node": env.get("SLURM_GPUS_ON_NODE"),
        "restarts": str(slurm.restart_count()),
    }
    detail = ", ".join(f"{k} {v}" for k, v in fields.items() if v)
    if not shutil.which("scontrol"):
        return Check("slurm", "warn", f"{detail}; no scontrol on PATH: a preempted job cannot requeue itself")
    return Check("slurm", "ok", detail)


def check_batch(cfg: DictConfig) -> Check:
    """The batch this launch trains with: global, and per process (what each GPU must hold)."""
    from bigtrain.config.launcher import batch_over, launcher_world_size

    world, acc = launcher_world_size(), int(cfg.trainer.accumulation)
    per = int(cfg.data.batch_size)
    stated = "data.global_batch_size" if int(cfg.data.global_batch_size) else "data.batch_size per process"
    return Check(
        "batch",
        "info",
        f"{batch_over(cfg, world)} global = {per} per process x {world} process(es) x {acc} accumulation(s) (from {stated})",
    )


def run_checks(cfg: DictConfig, verify_checksums: bool = True) -> list[Check]:
    steps: list[Callable[[], list[Check] | Check]] = [
        check_software,
        lambda: check_weights(cfg),
        lambda: check_dataset(cfg, verify_checksums),
        lambda: check_batch(cfg),
        lambda: check_run_dir(cfg),
        lambda: check_tracking(cfg),
        check_slurm,
    ]
    out: list[Check] = []
    for step in steps:
        result = step()
        out.extend(result if isinstance(result, list) else [result])
    return out


MARKS = {"ok": "ok  ", "warn": "warn", "fail": "FAIL", "info": "    "}


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    as_json, quick = "--json" in argv, "--quick" in argv
    cfg = compose_config([a for a in argv if a not in ("--json", "--quick")])
    checks = run_checks(cfg, verify_checksums=not quick)
    failed = [c for c in checks if c.status == "fail"]
    if as_json:
        report: dict[str, Any] = {"ok": not failed, "checks": [asdict(c) for c in checks]}
        print(json.dumps(report))
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            print(f"{MARKS[c.status]}  {c.name.ljust(width)}  {c.detail}")
        print(f"\n{len(failed)} problem(s): {', '.join(c.name for c in failed)}" if failed else "\nready")
    sys.stdout.flush()
    return 1 if failed else 0

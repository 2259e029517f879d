"""Runs side by side for review: metric curves in one PNG, and the parameters that tell them apart.

A sweep's runs share almost every parameter; a reviewer needs the few that differ (and a handful
that always matter), plus how the metric moved. Everything is read back from MLflow, so it works
for runs logged to a shared ``mlflow server`` as well as to a local SQLite store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KEY_PARAMS = (
    "model.name",
    "loss.name",
    "data.batch_size",
    "trainer.accumulation",
    "optim.g.lr",
    "optim.d.lr",
    "trainer.precision",
)


@dataclass
class RunSummary:
    run_id: str
    name: str
    status: str
    params: dict[str, str]
    curve: list[tuple[int, float]] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def last(self) -> float | None:
        return self.curve[-1][1] if self.curve else None

    @property
    def best(self) -> float | None:
        return min(v for _, v in self.curve) if self.curve else None


def pick_metric(client: Any, run_ids: list[str], metric: str | None) -> str:
    """``metric``, or the first ``fid/...`` key the runs logged (a tokenizer's ``rfid/...`` when no
    run has a generator's FID: the two measure different things and never share an axis)."""
    if metric:
        return metric
    for prefix in ("fid/", "rfid/"):
        for rid in run_ids:
            keys = sorted(k for k in client.get_run(rid).data.metrics if k.startswith(prefix))
            if keys:
                return keys[0]
    raise ValueError("these runs logged no fid/* or rfid/* metric; pass --metric NAME")


def collect(
    uri: str, run_ids: list[str], experiment: str | None, metric: str | None
) -> tuple[str, list[RunSummary]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    ids = list(run_ids)
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise ValueError(f"no MLflow experiment {experiment!r} at {uri}")
        ids += [
            r.info.run_id
            for r in client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
        ]
    if not ids:
        raise ValueError("name runs (run ids) or --experiment NAME")
    key = pick_metric(client, ids, metric)
    out = []
    for rid in dict.fromkeys(ids):
        run = client.get_run(rid)
        history = sorted(client.get_metric_history(rid, key), key=lambda m: (m.step, m.timestamp))
        curve = list({m.step: m.value for m in history}.items())  # a re-evaluated step keeps its last value
        out.append(
            RunSummary(
                rid,
                run.info.run_name or rid[:8],
                run.info.status,
                dict(run.data.params),
                curve,
                dict(run.data.tags),
            )
        )
    return key, out


def differing_params(runs: list[RunSummary]) -> list[str]:
    """Key parameters plus every parameter whose value is not the same in all runs."""
    keys = set().union(*(r.params for r in runs))
    differ = sorted(k for k in keys if len({r.params.get(k) for r in runs}) > 1 and not k.startswith("run."))
    return [k for k in KEY_PARAMS if k in keys and k not in differ] + differ


def table(metric: str, runs: list[RunSummary]) -> str:
    """A Markdown table: one row per run; pastes into a review or an issue."""
    cols = differing_params(runs)
    head = ["run", "name", "status", *cols, f"{metric} last", f"{metric} best", "last checkpoint"]
    rows = [
        [
            r.run_id[:8],
            r.name,
            r.status,
            *(r.params.get(c, "") for c in cols),
            f"{r.last:.2f}" if r.last is not None else "",
            f"{r.best:.2f}" if r.best is not None else "",
            r.tags.get("last_checkpoint", ""),
        ]
        for r in runs
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def plot(metric: str, runs: list[RunSummary], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only: works on a login node without a display
    import matplotlib.pyplot as plt

    differ = [
        k for k in differing_params(runs) if k not in KEY_PARAMS or len({r.params.get(k) for r in runs}) > 1
    ]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for r in runs:
        if not r.curve:
            continue
        label = r.name + "".join(f", {k}={r.params.get(k)}" for k in differ[:3])
        steps, values = zip(*r.curve, strict=True)
        ax.plot(steps, values, marker="o", markersize=3, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} by step ({len(runs)} runs)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


__all__ = ["KEY_PARAMS", "RunSummary", "collect", "differing_params", "plot", "table"]

"""Scaling on paper (issue 19): multi-GPU throughput of BigGAN-128 and the GPT-B prior, estimated from
the measured single-GPU step and the gradient volume, with and without the gradient all-reduce
overlapping backward.

    python benchmarks/scaling_model.py [nvlink_gbs=400] [node_gbps=400] [nics_per_node=1] ...

Measured inputs (defaults; ``benchmarks/gpu/results/h200-2026-12-04.log``, one H200, torch 2.11):
BigGAN-128 at 256 per GPU, bf16 + channels_last + compile + every lever: 0.3213 s per iteration
(1 D step + 1 G step + EMA); GPT-B (110.9M parameters, 256 tokens) bf16 + compile: 0.0269 s per step
at 64 sequences, 0.099 s at 256. Parameters: BigGAN G 70,433,988 and D 87,982,370, each network's
gradients averaged once per iteration; the prior's 110,888,448 once per step.

Assumptions (arguments, not measurements): fp32 gradients (4 bytes, as both tasks reduce them); an
NCCL all-reduce bus bandwidth of ``nvlink_gbs`` GB/s inside a node (NVLink 4 + NVSwitch; NVIDIA's
nccl-tests report 400-480 for large messages on 8 H100s) at ``latency_us`` per hop; between nodes
``nics_per_node`` links of ``node_gbps`` Gb/s at ``net_efficiency``. The all-reduce is hierarchical,
as NCCL's tree/ring over nodes behaves for large messages: a reduce-scatter and an all-gather inside
the node, 2 (g-1)/g S / B_nvlink, and between nodes each GPU's 1/g shard, all sharing the node's
links: 2 (N-1)/N S / B_node. Without overlap the whole all-reduce adds to the step; with it (buckets
launched while backward continues, ``bigtrain/distributed/overlap.py``) only what does not fit in
the backward time (``backward_share`` of the step) is exposed, and never less than the last bucket's
reduction. With ``sync_bn=true``, BigGAN's cross-replica BatchNorm (``model.arch.cross_replica_bn``,
off in the preset as in the reference's launch script) adds one small all-reduce per BN layer and
forward, latency-bound: ``bn_layers`` x 3 forwards x ``small_allreduce_us`` (inside a node) or
``small_allreduce_us_nodes`` (across nodes), typical NCCL latencies for a few bytes.
Prints a table and one JSON line last.
"""

from __future__ import annotations

from typing import Any

from _common import emit, parse_args

BIGGAN_G, BIGGAN_D, GPT_B = 70_433_988, 87_982_370, 110_888_448


def allreduce_s(nbytes: float, gpus: int, nodes: int, a: dict[str, Any]) -> float:
    """Seconds for one all-reduce of ``nbytes`` over ``nodes`` x ``gpus`` GPUs (hierarchical ring)."""
    lat = a["latency_us"] * 1e-6
    t = 0.0
    if gpus > 1:
        t += 2 * (gpus - 1) / gpus * nbytes / (a["nvlink_gbs"] * 1e9) + 2 * (gpus - 1) * lat
    if nodes > 1:
        node_bw = a["nics_per_node"] * a["node_gbps"] / 8 * 1e9 * a["net_efficiency"]
        t += 2 * (nodes - 1) / nodes * nbytes / node_bw + 2 * (nodes - 1) * 4 * lat
    return t


def estimate(
    name: str, step_s: float, items: int, grad_params: list[int], gpus: int, nodes: int, a: dict[str, Any],
    bn_allreduces: int = 0,
) -> dict[str, Any]:  # fmt: skip
    world = gpus * nodes
    comm = sum(allreduce_s(4 * n, gpus, nodes, a) for n in grad_params)
    bucket = allreduce_s(a["bucket_mb"] * 2**20, gpus, nodes, a)
    exposed = max(comm - a["backward_share"] * step_s, min(comm, bucket * len(grad_params)))
    small = a["small_allreduce_us"] if nodes == 1 else a["small_allreduce_us_nodes"]
    bn = bn_allreduces * small * 1e-6 if world > 1 else 0.0
    plain = step_s + comm + bn
    overlapped = step_s + exposed + bn
    one = items / step_s
    return {
        "model": name,
        "gpus": world,
        "allreduce_ms": round(comm * 1e3, 2),
        "exposed_ms": round(exposed * 1e3, 2),
        "sync_bn_ms": round(bn * 1e3, 2),
        "per_s_no_overlap": round(world * items / plain, 1),
        "per_s_overlap": round(world * items / overlapped, 1),
        "efficiency_no_overlap": round(world * items / plain / (world * one), 3),
        "efficiency_overlap": round(world * items / overlapped / (world * one), 3),
    }


def main() -> None:
    a = parse_args(
        {
            "biggan_step_s": 0.3213, "biggan_batch": 256, "bn_layers": 24,
            "gptb_step_s": 0.0269, "gptb_batch": 64, "gptb_step_s_256": 0.099,
            "nvlink_gbs": 400.0, "node_gbps": 400.0, "nics_per_node": 1, "net_efficiency": 0.9,
            "latency_us": 10.0, "backward_share": 0.6, "bucket_mb": 25.0,
            "sync_bn": False, "small_allreduce_us": 15.0, "small_allreduce_us_nodes": 40.0,
        }
    )  # fmt: skip
    rows = []
    for gpus, nodes in ((8, 1), (8, 4)):
        rows.append(estimate("biggan128 img/s", a["biggan_step_s"], a["biggan_batch"], [BIGGAN_D, BIGGAN_G],
                             gpus, nodes, a, bn_allreduces=3 * a["bn_layers"] if a["sync_bn"] else 0))  # fmt: skip
        rows.append(estimate("gpt_b tokens/s (64 seq/GPU)", a["gptb_step_s"], a["gptb_batch"] * 256, [GPT_B],
                             gpus, nodes, a))  # fmt: skip
        rows.append(estimate("gpt_b tokens/s (256 seq/GPU)", a["gptb_step_s_256"], 256 * 256, [GPT_B],
                             gpus, nodes, a))  # fmt: skip
    print(
        f"{'model':30s} {'GPUs':>4s} {'all-red ms':>10s} {'exposed':>8s} {'no overlap':>12s} {'overlap':>12s}"
    )
    for r in rows:
        print(
            f"{r['model']:30s} {r['gpus']:4d} {r['allreduce_ms']:10.1f} {r['exposed_ms']:8.1f} "
            f"{r['per_s_no_overlap']:12.0f} ({r['efficiency_no_overlap']:.2f}) "
            f"{r['per_s_overlap']:10.0f} ({r['efficiency_overlap']:.2f})"
        )
    emit(
        {
            "bench": "scaling_model",
            "assumptions": {k: v for k, v in a.items() if k != "overrides"},
            "rows": rows,
        }
    )


if __name__ == "__main__":
    main()

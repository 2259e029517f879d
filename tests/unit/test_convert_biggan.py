"""``bigtrain convert biggan-pytorch``: weights written in BigGAN-PyTorch's key layout (its
``utils.save_weights`` files) become a bigtrain checkpoint with the same tensors, which samples;
settings that differ from the preset's and files that do not fit are one-line errors. (Parity with
the reference's own code: ``benchmarks/reference_parity.py family=biggan``.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import bigtrain
from bigtrain.checkpoint.io import open_checkpoint
from bigtrain.convert import convert
from bigtrain.errors import CheckpointError, ConfigError
from bigtrain.models import build_gan

CH, Z, SHARED, CLASSES, RES = 16, 60, 16, 5, 32
OVERRIDES = ["experiment=imagenet128_biggan", f"data.resolution={RES}", f"data.num_classes={CLASSES}",
             "data.path=/nonexistent", f"model.g_width={CH}", f"model.d_width={CH}", f"model.z_dim={Z}",
             f"model.arch.shared_dim={SHARED}", "model.arch.attention=[16]"]  # fmt: skip


def reference_key(name: str) -> str:
    """bigtrain's key as BigGAN-PyTorch names it, written independently of the converter: a block and
    its attention share ``blocks.i``; statistics are ``stored_*``; spectral norm's are ``u0``/``sv0``."""
    name = name.replace(".parametrizations.weight.original", ".weight")
    name = re.sub(r"\.parametrizations\.weight\.0\.u$", ".u0", name)
    name = re.sub(r"\.parametrizations\.weight\.0\.sv$", ".sv0", name)
    name = re.sub(r"^blocks\.(\d+)\.", r"blocks.\1.0.", name)
    name = re.sub(r"^attention\.(\d+)\.", r"blocks.\1.1.", name)
    for ours, theirs in [("out_bn.weight", "output_layer.0.gain"), ("out_bn.bias", "output_layer.0.bias"),
                         ("out_bn.running_mean", "output_layer.0.stored_mean"),
                         ("out_bn.running_var", "output_layer.0.stored_var"), ("out_conv", "output_layer.2"),
                         ("bn.running_mean", "stored_mean"), ("bn.running_var", "stored_var")]:  # fmt: skip
        name = name.replace(ours, theirs)
    return name


def _reference_files(folder: Path, suffix: str = "", **config: object) -> tuple[dict, dict]:
    torch.manual_seed(0)
    g, d = build_gan("biggan", resolution=RES, channels=3, num_classes=CLASSES, z_dim=Z, g_width=CH, d_width=CH,
                     shared_dim=SHARED, attention=(16,))  # fmt: skip
    for net in (g, d):
        for name, t in net.state_dict().items():
            if t.is_floating_point() and "running_var" not in name:
                t.normal_(0, 0.05)  # not the initial values: a misplaced tensor would show
    folder.mkdir(parents=True, exist_ok=True)
    tag = f"_{suffix}" if suffix else ""
    ref = {n: {reference_key(k): v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
           for n, net in (("G", g), ("D", d))}  # fmt: skip
    torch.save(ref["G"], folder / f"G{tag}.pth")
    torch.save(ref["G"], folder / f"G_ema{tag}.pth")
    torch.save(ref["D"], folder / f"D{tag}.pth")
    cfg = {"G_ch": CH, "D_ch": CH, "dim_z": Z, "shared_dim": SHARED, "hier": True, "G_attn": "16", "D_attn": "16",
           "resolution": RES, "n_classes": CLASSES, **config}  # fmt: skip
    torch.save({"itr": 4321, "epoch": 2, "best_FID": 12.5, "config": cfg}, folder / f"state_dict{tag}.pth")
    return g.state_dict(), d.state_dict()


def test_reference_layout_round_trips_into_a_checkpoint_that_samples(tmp_path: Path) -> None:
    g_state, d_state = _reference_files(tmp_path / "weights", suffix="best0")
    ck = convert("biggan-pytorch", tmp_path / "weights" / "G_ema_best0.pth", tmp_path / "run", OVERRIDES)
    opened = open_checkpoint(ck)
    assert opened.step == 4321 and ck.name == "step-00004321"
    src = opened.meta["converted_from"]
    assert src["format"] == "biggan-pytorch" and sorted(src["components"]) == ["D", "G", "G_ema"]
    assert src["reference"]["best_FID"] == 12.5 and len(src["files"]["G_ema"]["sha256"]) == 64
    for comp, want in (("G", g_state), ("G_ema", g_state), ("D", d_state)):
        got = opened.load(comp, weights_only=True)
        assert set(got) == set(want)
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=f"{comp} {k}")
    m = bigtrain.load(tmp_path / "run", device="cpu")
    x = m.sample(4, classes=[1, 3], seed=0)
    assert x.shape == (4, 3, RES, RES) and torch.isfinite(x).all()
    g, _ = build_gan("biggan", resolution=RES, channels=3, num_classes=CLASSES, z_dim=Z, g_width=CH, d_width=CH,
                     shared_dim=SHARED, attention=(16,))  # fmt: skip
    g.load_state_dict(g_state)
    z, y = torch.randn(3, Z), torch.tensor([0, 2, 4])
    with torch.no_grad():
        torch.testing.assert_close(m.sample(z=z, classes=y), g.eval()(z, y).clamp(-1, 1), rtol=0, atol=0)


def test_settings_and_tensors_that_do_not_fit_are_one_line(tmp_path: Path) -> None:
    _reference_files(tmp_path / "a", dim_z=128, SN_eps=1e-8)
    with pytest.raises(
        ConfigError, match=r"dim_z=128 \(model.z_dim=60\), SN_eps=1e-08 \(model.arch.sn_eps=1e-06\)"
    ):
        convert("biggan-pytorch", tmp_path / "a", tmp_path / "run-a", OVERRIDES)
    _reference_files(tmp_path / "b")
    (tmp_path / "b" / "state_dict.pth").unlink()  # no config to check: the shapes still are
    with pytest.raises(
        CheckpointError, match=r"G\.pth: reference tensor linear\.\w+ is .* the preset's settings differ"
    ):
        convert("biggan-pytorch", tmp_path / "b", tmp_path / "run-b", [*OVERRIDES, "model.g_width=32"])
    torch.save({"linear.weight": torch.zeros(1)}, tmp_path / "b" / "D.pth")
    with pytest.raises(CheckpointError, match="D.pth: reference tensor linear.weight"):
        convert("biggan-pytorch", tmp_path / "b", tmp_path / "run-c", OVERRIDES)
    (tmp_path / "c").mkdir()
    with pytest.raises(ConfigError, match="no G.pth or G_ema.pth"):
        convert("biggan-pytorch", tmp_path / "c", tmp_path / "run-d", OVERRIDES)


def test_the_default_preset_has_the_released_runs_settings() -> None:
    """``bigtrain convert biggan-pytorch`` defaults to ``experiment=imagenet128_biggan``; the released
    128 px model was trained by BigGAN-PyTorch's ``scripts/launch_BigGAN_bs256x8.sh`` (these values;
    ``BN_eps`` is also its argparse default) and its ``state_dict.pth`` carries them."""
    from bigtrain.convert.biggan_pytorch import check_settings
    from bigtrain.train.compose import compose_config

    released = {"G_ch": 96, "D_ch": 96, "dim_z": 120, "shared_dim": 128, "hier": True, "G_attn": "64",
                "D_attn": "64", "SN_eps": 1e-6, "BN_eps": 1e-5, "resolution": 128, "n_classes": 1000}  # fmt: skip
    check_settings(released, compose_config(["experiment=imagenet128_biggan"]), deep=False)
    with pytest.raises(ConfigError, match=r"G_ch=64 \(model.g_width=96\)"):
        check_settings(
            {**released, "G_ch": 64}, compose_config(["experiment=imagenet128_biggan"]), deep=False
        )


def test_a_release_with_only_g_ema_gives_both_generators(tmp_path: Path) -> None:
    """Released folders often hold ``G_ema.pth`` alone: G starts from it too (not from noise)."""
    g_state, _ = _reference_files(tmp_path / "w")
    (tmp_path / "w" / "G.pth").unlink()
    (tmp_path / "w" / "D.pth").unlink()
    ck = open_checkpoint(convert("biggan-pytorch", tmp_path / "w", tmp_path / "run", OVERRIDES))
    assert ck.meta["converted_from"]["components"] == ["G_ema"]
    for comp in ("G", "G_ema"):
        got = ck.load(comp, weights_only=True)
        for k in g_state:
            torch.testing.assert_close(got[k], g_state[k], rtol=0, atol=0, msg=f"{comp} {k}")
    no_ema = open_checkpoint(
        convert("biggan-pytorch", tmp_path / "w", tmp_path / "run2", [*OVERRIDES, "ema.enabled=false"])
    )
    assert no_ema.meta["converted_from"]["components"] == ["G"]
    torch.testing.assert_close(no_ema.load("G", weights_only=True)["linear.bias"], g_state["linear.bias"])

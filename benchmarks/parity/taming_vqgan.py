"""The VQ-GAN tokenizer against CompVis/taming-transformers (``ref=PATH``, a checkout of it).

The reference side is built from taming's own modules: ``Encoder``/``Decoder``
(``taming.modules.diffusionmodules.model``), the 1x1 ``quant_conv``/``post_quant_conv`` of its
``VQModel``, ``VectorQuantizer2`` with its default ``legacy=True`` (the released models' loss) and
``VQLPIPSWithDiscriminator`` (its ``NLayerDiscriminator``, hinge loss, adaptive weight). LPIPS is
off on both sides (``perceptual_weight=0``; taming's loss builds its LPIPS at construction, which
downloads weights, so it is replaced by a stub that is never called).

bigtrain's side is a real ``task=tokenizer`` training step (``TokenizerTask.train_step`` with
learning rates 0, so the gradients can be read after it): the code path a run takes. Compared:
the encoder output, the chosen codes, ``z_q`` and the reconstruction; the autoencoder's total loss
(L1 + codebook/commitment + adaptive-weight GAN term) and every autoencoder parameter's gradient;
the discriminator's hinge loss and its gradients.

The reference's tensors reach bigtrain's modules through the converter's own renaming
(:func:`bigtrain.convert.taming.to_bigtrain`), and ``convert_*`` checks ``bigtrain convert taming``
end to end: the reference modules' state dict saved as taming's Lightning checkpoint
(``{"state_dict", "global_step"}``, LPIPS left out: it is skipped), converted, loaded with
``bigtrain.load``; its codes and reconstructions (and the converted PatchGAN's logits) against the
reference's on the same images.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bigtrain.convert.taming import to_bigtrain
from bigtrain.data.manifest import DatasetManifest
from bigtrain.distributed import LocalAccelerator
from bigtrain.train.compose import compose_config
from bigtrain.train.task import build_task

RES, CH, CH_MULT, Z, CODES, NDF, LAYERS, BATCH = 32, 32, (1, 2, 2), 32, 64, 16, 2, 4


class _NoLPIPS(nn.Module):
    """Stands in for taming's LPIPS (whose constructor downloads weights); never called here."""

    def forward(self, *args: Any) -> torch.Tensor:
        raise AssertionError("LPIPS is off in this comparison")


def _reference() -> dict[str, nn.Module]:
    from taming.modules.diffusionmodules.model import Decoder, Encoder
    from taming.modules.losses import vqperceptual
    from taming.modules.vqvae.quantize import VectorQuantizer2

    kw = dict(ch=CH, out_ch=3, ch_mult=CH_MULT, num_res_blocks=1, attn_resolutions=(8,), dropout=0.0,
              in_channels=3, resolution=RES, z_channels=Z, double_z=False)  # fmt: skip
    vqperceptual.LPIPS = _NoLPIPS
    loss = vqperceptual.VQLPIPSWithDiscriminator(
        disc_start=0, codebook_weight=1.0, pixelloss_weight=1.0, disc_num_layers=LAYERS, disc_in_channels=3,
        disc_factor=1.0, disc_weight=0.8, perceptual_weight=0.0, use_actnorm=False, disc_ndf=NDF, disc_loss="hinge",
    )  # fmt: skip
    return {
        "encoder": Encoder(**kw),
        "decoder": Decoder(**kw),
        "quant_conv": nn.Conv2d(Z, Z, 1),
        "post_quant_conv": nn.Conv2d(Z, Z, 1),
        "quantize": VectorQuantizer2(CODES, Z, beta=0.25),  # legacy=True, the default
        "loss": loss,
    }


OURS = [
        "experiment=imagenet256_vqgan_f16", "data.path=/unused", f"data.resolution={RES}", f"data.batch_size={BATCH}",
        "data.global_batch_size=0",
        f"model.arch.ch={CH}", f"model.arch.ch_mult=[{','.join(map(str, CH_MULT))}]", "model.arch.num_res_blocks=1",
        "model.arch.attn_resolutions=[8]", f"model.arch.z_channels={Z}", f"model.arch.embed_dim={Z}",
        f"model.arch.num_codes={CODES}", "model.arch.groups=32", "vq.perceptual_weight=0", "vq.disc_start=0",
        f"vq.disc_layers={LAYERS}", f"vq.disc_width={NDF}", "optim.vq.lr=0", "optim.d.lr=0", "trainer.precision=no",
]  # fmt: skip


def _ours() -> Any:
    cfg = compose_config(OURS)
    manifest = DatasetManifest(Path(tempfile.gettempdir()), "synthetic", RES, 3, ["0"], {}, {})
    return build_task(cfg, manifest, torch.device("cpu"), LocalAccelerator(torch.device("cpu"), "no"))


def _reference_state(ref: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """The reference modules as taming's ``VQModel.state_dict()`` names them (LPIPS aside)."""
    state = {f"{n}.{k}": v for n in ("encoder", "decoder", "quant_conv", "post_quant_conv", "quantize")
             for k, v in ref[n].state_dict().items()}  # fmt: skip
    return state | {f"loss.discriminator.{k}": v for k, v in ref["loss"].discriminator.state_dict().items()}


def _load(ours: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """bigtrain's tensors from the converter's renaming; bigtrain's own code-usage buffers stay."""
    mine = ours.state_dict()
    bad = [k for k in state if k not in mine or mine[k].shape != state[k].shape]
    if bad:
        raise KeyError(f"no place in bigtrain's model for reference tensors {bad[:5]}")
    ours.load_state_dict({**mine, **state})


def convert_parity(ref: dict[str, nn.Module], x: torch.Tensor) -> dict[str, float]:
    import bigtrain
    from bigtrain.checkpoint.io import open_checkpoint
    from bigtrain.convert import convert
    from bigtrain.models.patchgan import PatchDiscriminator

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "last.ckpt"
        torch.save({"state_dict": _reference_state(ref), "global_step": 11, "epoch": 0}, path)
        ck = convert(
            "taming", path, Path(tmp) / "run", [*OURS, "vq.disc_start=0", f"vq.disc_layers={LAYERS}"]
        )
        m = bigtrain.load(Path(tmp) / "run", device="cpu")
        d = PatchDiscriminator(3, NDF, LAYERS)
        d.load_state_dict(open_checkpoint(ck).load("D", weights_only=True))
    for mod in ref.values():
        mod.eval()
    with torch.no_grad():
        _, _, (_, _, idx) = ref["quantize"](ref["quant_conv"](ref["encoder"](x)))
        idx = idx.view(x.shape[0], RES // 4, RES // 4)
        xrec = ref["decoder"](ref["post_quant_conv"](ref["quantize"].get_codebook_entry(
            idx.reshape(-1), (x.shape[0], RES // 4, RES // 4, Z))))  # fmt: skip
        codes = m.encode(x)
        logits_ref, logits_ours = ref["loss"].discriminator(x), d.eval()(x)
    return {
        "convert_codes_differ": float((codes != idx).sum()),
        "convert_reconstruction": _max_diff(m.decode(codes), xrec.clamp(-1, 1)),
        "convert_D_logits": _max_diff(logits_ref, logits_ours),
    }


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def run(family: str, ref: str) -> dict[str, Any]:  # noqa: ARG001
    torch.manual_seed(0)
    ref = _reference()
    task = _ours()
    vq, D = task.vq, task.D
    weights, unplaced = to_bigtrain(_reference_state(ref))  # the converter's renaming
    assert not unplaced, unplaced
    _load(vq, weights["vq"])
    _load(D, weights["D"])
    x = torch.rand(BATCH, 3, RES, RES, generator=torch.Generator().manual_seed(1)) * 2 - 1

    # the reference's training step, as taming's VQModel.training_step runs it (optimizer 0, then 1)
    h = ref["quant_conv"](ref["encoder"](x))
    z_q, qloss, (_, _, idx) = ref["quantize"](h)
    xrec = ref["decoder"](ref["post_quant_conv"](z_q))
    ae_loss, _ = ref["loss"](qloss, x, xrec, 0, global_step=1, last_layer=ref["decoder"].conv_out.weight)
    ae_loss.backward()
    ref["loss"].discriminator.zero_grad()  # Lightning steps each optimizer on its own gradients
    d_loss, _ = ref["loss"](qloss, x, xrec, 1, global_step=1)
    d_loss.backward()

    with torch.no_grad():  # bigtrain's forward pieces, for the output comparison
        vq.eval()
        h_ours = vq.quant_conv(vq.encoder(x))
        out = vq.quantize(h_ours)
        xrec_ours = vq.decode(out.z_q)
        vq.train()
    metrics = task.train_step(1, iter([{"image": x, "label": torch.zeros(BATCH, dtype=torch.long)}] * 2))

    outputs = {
        "encoder": _max_diff(h, h_ours),
        "codes_differ": float((idx.view(-1) != out.indices.view(-1)).sum()),
        "z_q": _max_diff(z_q, out.z_q),
        "decoder": _max_diff(xrec, xrec_ours),
    }
    ref_params = {f"{n}.{k}": p for n in ("encoder", "decoder", "quant_conv", "post_quant_conv", "quantize")
                  for k, p in ref[n].named_parameters()}  # fmt: skip
    ours_params = dict(vq.named_parameters())
    grads = {k: _max_diff(p.grad, ours_params[k].grad) for k, p in ref_params.items()}
    d_ref = dict(ref["loss"].discriminator.named_parameters())
    d_grads = {k: _max_diff(p.grad, d_ref[k].grad) for k, p in D.named_parameters()}
    losses = {
        "autoencoder": abs(ae_loss.item() - metrics["loss/total"]),
        "D": abs(d_loss.item() - metrics["loss/D"]),
    }
    worst = max(grads, key=grads.get)
    converted = convert_parity(ref, x)
    print(f"converted: {converted}")
    print(f"outputs {outputs}\nlosses {losses}\nworst autoencoder gradient: {worst} {grads[worst]:.2e}; "
          f"D gradients {max(d_grads.values()):.2e}")  # fmt: skip
    return {
        "params_ours": sum(p.numel() for p in vq.parameters()) + sum(p.numel() for p in D.parameters()),
        "params_ref": sum(p.numel() for p in ref_params.values())
        + sum(p.numel() for p in ref["loss"].discriminator.parameters()),
        "max_abs_diff": max(v for k, v in outputs.items() if k != "codes_differ"),
        "codes_differ": outputs["codes_differ"],
        "loss_abs_diff": max(losses.values()),
        "grad_max_abs_diff": max(max(grads.values()), max(d_grads.values())),
        "outputs": outputs,
        "losses": losses,
        **converted,
    }

"""pix2pix's and CycleGAN's networks against junyanz/pytorch-CycleGAN-and-pix2pix (``ref=PATH``).

The reference side is the release's own ``models/networks.py`` (imported from the checkout:
``define_G``, ``define_D``, ``get_norm_layer``, ``init_weights`` as ``--model pix2pix`` /
``--model cycle_gan`` call them); bigtrain's side is built by the registered families through
``build_translation``, at small sizes (64 px, ngf = ndf = 8):

* ``family=pix2pix``: the U-Net (``num_downs`` 6 = log2(64), dropout on: one 8*ngf level) and the
  conditional 70x70 PatchGAN on ``cat(source, target)`` (6 channels), BatchNorm; the same pair with
  instance norm and with none is compared too (``norms``);
* ``family=cyclegan``: ``resnet_9blocks`` both ways (A has 3 channels, B 1, so a crossed domain
  shows) and both PatchGANs, instance norm; the release's ``netD_A`` judges B (G_A's outputs), so it
  is bigtrain's ``d_b``.

Mapping: both networks are run once with forward hooks on their leaf modules; the execution order
of those modules (padding layers aside: bigtrain pads inside its convs) must be the same sequence
of types, and every reference tensor is copied into the bigtrain module at the same position.
Compared on the same input: outputs in eval mode and in train mode with the dropout layers at
p = 0 (``max_abs_diff``), and in train mode with dropout on from the same RNG state
(``dropout_same_seed``); a loss (mean D logit on G's output) and every parameter's gradient.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from bigtrain.models import build_translation
from bigtrain.models.translation import ConditionalPatchDiscriminator

RES, WIDTH, BATCH = 64, 8, 2
PADS = (nn.ReflectionPad2d, nn.ReplicationPad2d, nn.ZeroPad2d)


def _networks() -> Any:
    from models import networks  # the checkout's models/networks.py (on sys.path)

    return networks


def _quiet(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """The release prints ``initialize network with normal``; keep the JSON line the last one."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def _leaf_order(net: nn.Module, *inputs: torch.Tensor) -> list[nn.Module]:
    """The leaf modules in the order a forward pass calls them (padding layers left out)."""
    order: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda m, i, o: order.append(m))
             for m in net.modules() if not list(m.children()) and not isinstance(m, PADS)]  # fmt: skip
    try:
        with torch.no_grad():
            net.eval()(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return order


Pair = tuple[nn.Module, nn.Module, tuple, tuple]  # (reference, bigtrain, reference inputs, bigtrain inputs)


def _copy(pair: Pair) -> list[tuple[nn.Module, nn.Module]]:
    """Copy every reference tensor into bigtrain's module at the same execution position; the
    matched ``(reference, bigtrain)`` leaf modules."""
    ref, ours, ri, oi = pair
    a, b = _leaf_order(ref, *ri), _leaf_order(ours, *oi)
    types_a, types_b = [type(m).__name__ for m in a], [type(m).__name__ for m in b]
    if types_a != types_b:
        raise AssertionError(f"layouts differ:\n ref  {types_a}\n ours {types_b}")
    for ma, mb in zip(a, b, strict=True):
        sa, sb = ma.state_dict(), mb.state_dict()
        if list(sa) != list(sb) or any(sa[k].shape != sb[k].shape for k in sa):
            raise AssertionError(f"{ma} vs {mb}: tensors differ")
        if isinstance(ma, nn.Conv2d | nn.ConvTranspose2d):
            geometry = ["stride", "kernel_size", "output_padding"]
            geometry += ["padding"] if mb.padding_mode == "zeros" else []  # else: a padding layer in ref
            assert all(getattr(ma, k) == getattr(mb, k) for k in geometry), (ma, mb)
        if isinstance(ma, nn.Dropout):
            assert ma.p == mb.p, (ma, mb)
        if isinstance(ma, nn.LeakyReLU):
            assert ma.negative_slope == mb.negative_slope, (ma, mb)
        mb.load_state_dict(sa)
    return list(zip(a, b, strict=True))


def _perturb(net: nn.Module) -> None:
    """Move BatchNorm's running statistics and every bias away from their initial values (all
    0/1 at init) so that a mix-up of them would show."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


@contextlib.contextmanager
def _dropout_off(*nets: nn.Module) -> Iterator[None]:
    """The dropout layers at p = 0 (train mode then only differs from eval in the norms)."""
    drops = [m for n in nets for m in n.modules() if isinstance(m, nn.Dropout)]
    ps = [m.p for m in drops]
    for m in drops:
        m.p = 0.0
    try:
        yield
    finally:
        for m, p in zip(drops, ps, strict=True):
            m.p = p


def _compare(pairs: list[Pair]) -> dict[str, float]:
    """Outputs in eval mode, in train mode with dropout at p = 0, and in train mode with dropout on
    from the same RNG state; the largest difference over ``pairs``."""
    out = {"eval": 0.0, "train": 0.0, "dropout_same_seed": 0.0}
    with torch.no_grad():
        for ref, ours, ri, oi in pairs:
            out["eval"] = max(out["eval"], _diff(ref.eval()(*ri), ours.eval()(*oi)))
            with _dropout_off(ref, ours):
                out["train"] = max(out["train"], _diff(ref.train()(*ri), ours.train()(*oi)))
            torch.manual_seed(123)
            a = ref.train()(*ri)
            torch.manual_seed(123)
            out["dropout_same_seed"] = max(out["dropout_same_seed"], _diff(a, ours.train()(*oi)))
    return out


def _grads(
    g: Pair, d: Pair, matched: list[tuple[nn.Module, nn.Module]], x: torch.Tensor
) -> tuple[float, float]:
    """loss = mean D logit on G(x) (train mode, dropout at p = 0; the conditional D gets ``x`` too):
    the loss difference and the largest difference of any parameter's gradient."""
    conditional = isinstance(d[1], ConditionalPatchDiscriminator)
    nets = (g[0], d[0], g[1], d[1])
    for net in nets:
        net.train().zero_grad()
    with _dropout_off(*nets):
        fake_ref, fake_ours = g[0](x), g[1](x)
        loss_ref = d[0](torch.cat([x, fake_ref], 1) if conditional else fake_ref).mean()
        loss_ours = (d[1](x, fake_ours) if conditional else d[1](fake_ours)).mean()
        loss_ref.backward()
        loss_ours.backward()
    grad = max(_diff(pa.grad, pb.grad) for ma, mb in matched
               for pa, pb in zip(ma.parameters(), mb.parameters(), strict=True))  # fmt: skip
    return abs(loss_ref.item() - loss_ours.item()), grad


def _n(*nets: nn.Module) -> int:
    return sum(p.numel() for n in nets for p in n.parameters())


def _pix2pix(N: Any, norm: str, x: torch.Tensor) -> dict[str, Any]:
    torch.manual_seed(0)
    # define_G's unet_256 / unet_128 at 64 px: num_downs 6, with dropout (pix2pix's default)
    g_ref = N.UnetGenerator(3, 3, 6, WIDTH, norm_layer=N.get_norm_layer(norm), use_dropout=True)
    _quiet(N.init_weights, g_ref, "normal", init_gain=0.02)
    d_ref = _quiet(N.define_D, 6, WIDTH, "basic", norm=norm)
    g, d = build_translation(
        "pix2pix", kind="paired", resolution=RES, in_channels=3, out_channels=3, g_width=WIDTH, d_width=WIDTH,
        norm=norm,
    )  # fmt: skip
    _perturb(g_ref)
    _perturb(d_ref)
    y = torch.rand_like(x) * 2 - 1
    pairs = [(g_ref, g, (x,), (x,)), (d_ref, d, (torch.cat([x, y], 1),), (x, y))]
    matched = [_copy(p) for p in pairs]
    diffs = _compare(pairs)
    loss, grad = _grads(pairs[0], pairs[1], matched[0] + matched[1], x)
    return {"params_ours": _n(g, d), "params_ref": _n(g_ref, d_ref), "layers_matched": sum(map(len, matched)),
            "dropout_layers": sum(isinstance(m, nn.Dropout) for m in g.modules()), **diffs,
            "loss": loss, "grad": grad}  # fmt: skip


def _cyclegan(N: Any, x: torch.Tensor) -> dict[str, Any]:
    torch.manual_seed(0)
    # the release's cycle_gan_model: netG_A = G(input_nc -> output_nc), netD_A = D(output_nc), ...
    g_a = _quiet(N.define_G, 3, 1, WIDTH, "resnet_9blocks", norm="instance", use_dropout=False)
    g_b = _quiet(N.define_G, 1, 3, WIDTH, "resnet_9blocks", norm="instance", use_dropout=False)
    d_a = _quiet(N.define_D, 1, WIDTH, "basic", norm="instance")
    d_b = _quiet(N.define_D, 3, WIDTH, "basic", norm="instance")
    nets = build_translation(
        "cyclegan",
        kind="unpaired",
        resolution=RES,
        in_channels=3,
        out_channels=1,
        g_width=WIDTH,
        d_width=WIDTH,
    )
    for net in (g_a, g_b, d_a, d_b):
        _perturb(net)
    b = torch.rand(x.shape[0], 1, *x.shape[2:]) * 2 - 1
    pairs = [(g_a, nets.g_ab, (x,), (x,)), (g_b, nets.g_ba, (b,), (b,)),
             (d_a, nets.d_b, (b,), (b,)), (d_b, nets.d_a, (x,), (x,))]  # fmt: skip
    matched = [_copy(p) for p in pairs]
    diffs = _compare(pairs)
    loss, grad = _grads(pairs[0], pairs[2], matched[0] + matched[2], x)
    return {"params_ours": _n(*nets), "params_ref": _n(g_a, g_b, d_a, d_b), "layers_matched": sum(map(len, matched)),
            **diffs, "loss": loss, "grad": grad}  # fmt: skip


def _full_size_counts(N: Any, family: str) -> dict[str, int]:
    """The release's 256 px networks (ngf = ndf = 64) counted against bigtrain's (on the meta device)."""
    if family == "pix2pix":
        ref = [_quiet(N.define_G, 3, 3, 64, "unet_256", norm="batch", use_dropout=True),
               _quiet(N.define_D, 6, 64, "basic", norm="batch")]  # fmt: skip
        with torch.device("meta"):
            ours = build_translation("pix2pix", resolution=256, in_channels=3, out_channels=3)
    else:
        ref = [_quiet(N.define_G, 3, 3, 64, "resnet_9blocks", norm="instance"),
               _quiet(N.define_D, 3, 64, "basic", norm="instance")]  # fmt: skip
        with torch.device("meta"):
            ours = build_translation("cyclegan", resolution=256, in_channels=3, out_channels=3)[::2]
    return {"G_ref": _n(ref[0]), "G_ours": _n(ours[0]), "D_ref": _n(ref[1]), "D_ours": _n(ours[1])}


def run(family: str, ref: str) -> dict[str, Any]:  # noqa: ARG001
    N = _networks()
    x = torch.rand(BATCH, 3, RES, RES, generator=torch.Generator().manual_seed(1)) * 2 - 1
    if family == "pix2pix":
        main = _pix2pix(N, "batch", x)
        norms = {norm: _pix2pix(N, norm, x) for norm in ("instance", "none")}
        details = {"norms": {k: {m: v[m] for m in ("eval", "train", "grad")} for k, v in norms.items()}}
        worst = max([main] + list(norms.values()), key=lambda r: max(r["eval"], r["train"]))
    else:
        main = _cyclegan(N, x)
        details, worst = {}, main
    counts = _full_size_counts(N, family)
    print(f"{family}: {main}\nfull size: {counts}\n{details}")
    return {
        "params_ours": main["params_ours"],
        "params_ref": main["params_ref"],
        "max_abs_diff": max(worst["eval"], worst["train"]),
        "eval_max_abs_diff": main["eval"],
        "train_max_abs_diff": main["train"],
        "dropout_same_seed_max_abs_diff": main["dropout_same_seed"],
        "loss_abs_diff": main["loss"],
        "grad_max_abs_diff": main["grad"],
        "layers_matched": main["layers_matched"],
        "full_size_params": counts,
        **details,
    }

"""The prior's LlamaGen block against FoundationVision/LlamaGen (``ref=PATH``, a checkout of it).

The reference is ``autoregressive/models/gpt.py`` (``Transformer``, ``GPT_B``) and
``autoregressive/models/generate.py`` (``generate``), imported from the checkout. Compared:

* parameter counts of GPT-B c2i (vocab 16,384, 256 codes, 1,000 classes): LlamaGen's
  ``GPT_B(vocab_size=16384)`` against ``model=gpt``'s defaults (``imagenet256_gpt_b``'s model);
* at a small shape (dim 128, 2 layers, 4 heads, 8x8 codes, 512-code vocabulary), with LlamaGen's
  tensors copied into bigtrain's by name (its zero head replaced by random weights, dropout off):
  the training logits of a batch (class token + codes, 2-D RoPE), the cross-entropy loss and
  every parameter's gradient;
* KV-cached generation with classifier-free guidance 2.0: LlamaGen's ``generate`` and bigtrain's
  ``generate``, each after ``torch.manual_seed(s)`` (both draw with ``torch.multinomial`` from the
  global generator), for several seeds: how many of the sampled codes differ.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bigtrain.convert.llamagen import gpt_name
from bigtrain.models import build_model
from bigtrain.models.transformer import PriorConfig, TokenPrior, generate

DIM, LAYERS, HEADS, VOCAB, GRID, CLASSES, BATCH, SEEDS = 128, 2, 4, 512, 8, 10, 4, 5


def _pairs(ref: nn.Module, ours: nn.Module) -> list[tuple[str, nn.Parameter, nn.Parameter]]:
    mine = dict(ours.named_parameters())
    return [(k, p, mine[str(gpt_name(k))]) for k, p in ref.named_parameters()]  # the converter's renaming


def _count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def convert_parity(ref: nn.Module, tokens: torch.Tensor, labels: torch.Tensor) -> float:
    import bigtrain
    from bigtrain.convert import convert
    from bigtrain.convert.taming import to_reference
    from bigtrain.models.vqgan import build_vqgan

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # a tiny tokenizer with VOCAB codes and an 8x8 grid (32 px, f = 4), to decode the prior's codes
        small = ["data.path=/unused", "data.resolution=32", "model.arch.ch=32", "model.arch.ch_mult=[1,2,2]",
                 "model.arch.num_res_blocks=1", "model.arch.attn_resolutions=[8]", "model.arch.z_channels=16",
                 "model.arch.embed_dim=16", f"model.arch.num_codes={VOCAB}", "vq.perceptual_weight=0",
                 "vq.disc_weight=0"]  # fmt: skip
        vq = build_vqgan(resolution=32, channels=3, ch=32, ch_mult=[1, 2, 2], num_res_blocks=1, attn_resolutions=[8],
                         z_channels=16, embed_dim=16, num_codes=VOCAB)  # fmt: skip
        torch.save({"state_dict": to_reference({"vq": vq.state_dict()}), "global_step": 0}, root / "vq.ckpt")
        tok = convert("taming", root / "vq.ckpt", root / "tok", ["experiment=imagenet256_vqgan_f16", *small])
        model = {**ref.state_dict(), "freqs_cis": ref.freqs_cis}
        torch.save(
            {"model": model, "steps": 3, "args": argparse.Namespace(gpt_model="GPT-B")}, root / "c2i.pt"
        )
        convert("llamagen-gpt", root / "c2i.pt", root / "prior", ["data.path=/unused", f"data.num_classes={CLASSES}",
                f"model.arch.dim={DIM}", f"model.arch.layers={LAYERS}", f"model.arch.heads={HEADS}",
                "prior.engine=torch"], {"tokenizer": str(tok)})  # fmt: skip
        m = bigtrain.load(root / "prior", device="cpu")
    with torch.no_grad():  # training mode (no KV cache yet), every dropout 0
        logits_ref, _ = ref(idx=tokens[:, :-1], cond_idx=labels)
        return (logits_ref - m.net(tokens[:, :-1], labels)).abs().max().item()


def vq_convert_parity() -> dict[str, float]:
    from tokenizer.tokenizer_image.vq_model import ModelArgs, VQModel

    import bigtrain
    from bigtrain.convert import convert

    torch.manual_seed(4)
    args = ModelArgs(
        codebook_size=VOCAB, codebook_embed_dim=8, encoder_ch_mult=[1, 2, 2], decoder_ch_mult=[1, 2, 2]
    )
    ref = VQModel(args).eval()
    with torch.no_grad():  # its codebook starts at +-1/K: spread it so that codes differ
        ref.quantize.embedding.weight.normal_()
    with tempfile.TemporaryDirectory() as tmp:
        torch.save({"model": ref.state_dict(), "steps": 9}, Path(tmp) / "vq.pt")
        convert("llamagen-vq", Path(tmp) / "vq.pt", Path(tmp) / "run", ["data.path=/unused", "data.resolution=32",
                "model.arch.ch_mult=[1,2,2]", "model.arch.attn_resolutions=[8]", f"model.arch.num_codes={VOCAB}",
                "vq.perceptual_weight=0"])  # fmt: skip
        m = bigtrain.load(Path(tmp) / "run", device="cpu")
    x = torch.rand(BATCH, 3, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1
    with torch.no_grad():
        _, _, (_, _, idx) = ref.encode(x)
        idx = idx.view(BATCH, 8, 8)
        xrec = ref.decode_code(idx.reshape(-1), (BATCH, 8, 8, 8)).clamp(-1, 1)
        codes = m.encode(x)
        return {
            "convert_vq_codes_differ": float((codes != idx).sum()),
            "convert_vq_reconstruction": (m.decode(codes) - xrec).abs().max().item(),
        }


def run(family: str, ref: str) -> dict[str, Any]:  # noqa: ARG001
    from autoregressive.models import gpt as lg
    from autoregressive.models.generate import generate as lg_generate

    ref_b = lg.GPT_B(vocab_size=16384, block_size=256, num_classes=1000, cls_token_num=1, model_type="c2i")
    with torch.device("meta"):  # (LlamaGen's constructor calls .item(), which the meta device refuses)
        ours_b = build_model("gpt", {}, vocab=16384, seq_len=256, num_classes=1000)

    torch.manual_seed(0)
    args = lg.ModelArgs(dim=DIM, n_layer=LAYERS, n_head=HEADS, vocab_size=VOCAB, block_size=GRID * GRID,
                        num_classes=CLASSES, cls_token_num=1, model_type="c2i", token_dropout_p=0.0,
                        resid_dropout_p=0.0, ffn_dropout_p=0.0, class_dropout_prob=0.1)  # fmt: skip
    ref = lg.Transformer(args)
    ref.cls_embedding.dropout_prob = 0.0  # keep the null-class row, but no random label dropout here
    nn.init.normal_(ref.output.weight, 0.0, 0.02)  # its head starts at zero: every logit would be 0
    ours = TokenPrior(PriorConfig(vocab=VOCAB, seq_len=GRID * GRID, num_classes=CLASSES, dim=DIM, layers=LAYERS,
                                  heads=HEADS, block="llama", positions="rope2d", label_dropout=0.0))  # fmt: skip
    pairs = _pairs(ref, ours)
    if len(pairs) != len(list(ours.parameters())):
        raise KeyError("bigtrain's prior has parameters LlamaGen's has not")
    with torch.no_grad():
        for _, a, b in pairs:
            b.copy_(a)

    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (BATCH, GRID * GRID), generator=g)
    labels = torch.randint(0, CLASSES, (BATCH,), generator=g)
    ref.train()
    ours.train()
    logits_ref, loss_ref = ref(idx=tokens[:, :-1], cond_idx=labels, targets=tokens)
    logits_ours = ours(tokens[:, :-1], labels)
    loss_ours = F.cross_entropy(logits_ours.float().reshape(-1, VOCAB), tokens.reshape(-1))
    assert torch.equal(loss_ours, ours.loss(tokens, labels))  # the task's loss is this one
    loss_ref.backward()
    loss_ours.backward()
    grad = max((a.grad - b.grad).abs().max().item() for _, a, b in pairs)

    converted = convert_parity(ref, tokens, labels)  # before generate() sets up LlamaGen's KV caches

    ref.eval()
    ours.eval()
    differ = 0
    for seed in range(SEEDS):
        torch.manual_seed(seed)
        a = lg_generate(ref, labels, GRID * GRID, cfg_scale=2.0, temperature=1.0, top_k=0, top_p=1.0)
        torch.manual_seed(seed)
        b = generate(ours, labels, BATCH, cfg_scale=2.0)
        differ += int((a.long() != b).sum())
    vq = vq_convert_parity()
    print(f"converted: logits {converted:.2e}; tokenizer {vq}")
    print(f"GPT-B parameters: LlamaGen {_count(ref_b):,}, bigtrain {_count(ours_b):,}")
    print(f"logits {(logits_ref - logits_ours).abs().max().item():.2e}, loss {abs(loss_ref.item() - loss_ours.item()):.2e}, "
          f"gradients {grad:.2e}; generated codes that differ: {differ} of {SEEDS * BATCH * GRID * GRID}")  # fmt: skip
    return {
        "params_ours": _count(ours_b),
        "params_ref": _count(ref_b),
        "max_abs_diff": (logits_ref - logits_ours).abs().max().item(),
        "loss_abs_diff": abs(loss_ref.item() - loss_ours.item()),
        "grad_max_abs_diff": grad,
        "generated_codes_differ": differ,
        "generated_codes": SEEDS * BATCH * GRID * GRID,
        "convert_logits_max_abs_diff": converted,
        **vq,
    }

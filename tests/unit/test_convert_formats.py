"""``bigtrain convert taming | llamagen-vq | llamagen-gpt``: small bigtrain networks written in the
reference's own key layout (renamed here, independently of the converters) become checkpoints with
the same tensors that ``bigtrain.load`` decodes and samples from; files that do not fit are one-line
errors naming the reference's tensor. (Parity with the references' own code:
``benchmarks/reference_parity.py family=taming_vqgan|llamagen_gpt mode=convert``.)"""

from __future__ import annotations

import argparse
import json
import re
import sys
import types
from pathlib import Path

import pytest
import torch

import bigtrain
from bigtrain.checkpoint.io import open_checkpoint
from bigtrain.convert import convert
from bigtrain.errors import CheckpointError
from bigtrain.models.patchgan import PatchDiscriminator
from bigtrain.models.transformer import PriorConfig, TokenPrior
from bigtrain.models.vqgan import build_vqgan
from tests.conftest import run_cli

RES, CODES = 32, 64
SMALL_VQ = ["data.path=/nonexistent", f"data.resolution={RES}", "data.channels=3", "model.arch.ch=32",
            "model.arch.ch_mult=[1,2,2]", "model.arch.num_res_blocks=1", "model.arch.attn_resolutions=[8]",
            "model.arch.z_channels=16", f"model.arch.num_codes={CODES}", "vq.perceptual_weight=0",
            "vq.disc_layers=2", "vq.disc_width=16"]  # fmt: skip
TAMING = ["experiment=imagenet256_vqgan_f16", *SMALL_VQ, "model.arch.embed_dim=16"]
BOOKKEEPING = ("unused_steps", "window_counts")


def _randomised(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    for name, t in net.state_dict().items():
        if t.is_floating_point() and "running_var" not in name:
            t.normal_(0, 0.05)  # not the initial values: a misplaced tensor would show
    return {k: v.clone() for k, v in net.state_dict().items()}


def _networks(embed_dim: int, **arch: object) -> tuple[torch.nn.Module, PatchDiscriminator]:
    torch.manual_seed(0)
    vq = build_vqgan(resolution=RES, channels=3, ch=32, ch_mult=[1, 2, 2], num_res_blocks=1, attn_resolutions=[8],
                     z_channels=16, embed_dim=embed_dim, num_codes=CODES, **arch)  # fmt: skip
    return vq, PatchDiscriminator(3, 16, 2)


def _lightning_callback_class() -> type:
    """A class in a module that exists only while the file is written, as a Lightning checkpoint
    names ``pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint`` (loading must not need it)."""
    module = types.ModuleType("fake_lightning_callbacks")
    cls = type("ModelCheckpoint", (), {"__module__": module.__name__})
    module.ModelCheckpoint = cls
    sys.modules[module.__name__] = module
    return cls


def _assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], what: str) -> None:
    assert set(got) == set(want), what
    for k in want:
        if not k.endswith(BOOKKEEPING):
            torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=f"{what} {k}")


def _taming_file(path: Path, vq_state: dict, d_state: dict) -> None:
    """taming's ``VQModel`` Lightning checkpoint: its names are bigtrain's (the layout follows the
    release), the PatchGAN under ``loss.discriminator``, LPIPS beside it, bookkeeping objects."""
    state = {k: v for k, v in vq_state.items() if not k.endswith(BOOKKEEPING)}
    state |= {f"loss.discriminator.{k}": v for k, v in d_state.items()}
    state |= {"loss.perceptual_loss.lin0.model.1.weight": torch.ones(1, 64, 1, 1)}
    cls = _lightning_callback_class()
    try:
        torch.save({"state_dict": state, "global_step": 1234, "epoch": 3, "callbacks": {cls: {"best": 1.0}},
                    "optimizer_states": [], "lr_schedulers": []}, path)  # fmt: skip
    finally:
        del sys.modules[cls.__module__]


def test_taming_checkpoint_converts_and_reconstructs(tmp_path: Path) -> None:
    vq, d = _networks(16)
    vq_state, d_state = _randomised(vq), _randomised(d)
    _taming_file(tmp_path / "last.ckpt", vq_state, d_state)
    ck = convert("taming", tmp_path / "last.ckpt", tmp_path / "run", TAMING)
    opened = open_checkpoint(ck)
    assert opened.step == 1234 and ck.name == "step-00001234"
    src = opened.meta["converted_from"]
    assert src["format"] == "taming" and sorted(src["components"]) == ["D", "vq"]
    assert src["placeholders"] == ["fake_lightning_callbacks.ModelCheckpoint"]
    assert len(src["files"]["last.ckpt"]) == 64 and src["skipped"] == {"loss.perceptual_loss.* (LPIPS)": 1}
    _assert_same(opened.load("vq", weights_only=True), vq_state, "vq")
    _assert_same(opened.load("D", weights_only=True), d_state, "D")
    m = bigtrain.load(tmp_path / "run", device="cpu")
    x = torch.rand(2, 3, RES, RES, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        want_codes = vq.eval().quantize.encode_indices(vq.quant_conv(vq.encoder(x)))
        want = vq.decode_indices(want_codes).clamp(-1, 1)
    codes = m.encode(x)
    assert torch.equal(codes, want_codes)
    torch.testing.assert_close(m.decode(codes), want, rtol=0, atol=0)


def test_taming_files_that_do_not_fit_are_one_line(tmp_path: Path) -> None:
    vq, d = _networks(16)
    vq_state, d_state = _randomised(vq), _randomised(d)
    _taming_file(tmp_path / "a.ckpt", vq_state, d_state)
    with pytest.raises(CheckpointError, match=r"a\.ckpt: tensor quantize\.embedding\.weight is \[64, 16\], "
                       r"bigtrain's vq\.quantize\.embedding\.weight is \[128, 16\]; for this file pass "
                       r"model.arch.num_codes=64 model.arch.embed_dim=16$"):  # fmt: skip
        convert("taming", tmp_path / "a.ckpt", tmp_path / "run-a", [*TAMING, "model.arch.num_codes=128"])
    with pytest.raises(CheckpointError, match=r"tensor loss\.discriminator\.main\.0\.weight is \[16, 3, 4, 4\], .* vq\.disc_layers=2 "
                       r"vq\.disc_width=16$"):  # fmt: skip
        convert("taming", tmp_path / "a.ckpt", tmp_path / "run-b", [*TAMING, "vq.disc_width=32"])
    missing = {k: v for k, v in vq_state.items() if k != "encoder.conv_in.weight"}
    _taming_file(tmp_path / "b.ckpt", missing, d_state)
    with pytest.raises(
        CheckpointError, match=r"b\.ckpt: no tensor encoder\.conv_in\.weight \(bigtrain's vq\."
    ):
        convert("taming", tmp_path / "b.ckpt", tmp_path / "run-c", TAMING)
    _taming_file(tmp_path / "c.ckpt", {**vq_state, "quantize.proj.weight": torch.zeros(1)}, d_state)
    with pytest.raises(
        CheckpointError, match=r"c\.ckpt: tensor quantize\.proj\.weight has no place in bigtrain's vq"
    ):
        convert("taming", tmp_path / "c.ckpt", tmp_path / "run-d", TAMING)
    torch.save({"weights": {}}, tmp_path / "d.ckpt")
    with pytest.raises(
        CheckpointError, match=r"d\.ckpt: no state dict under 'state_dict' \(it has: weights\)"
    ):
        convert("taming", tmp_path / "d.ckpt", tmp_path / "run-e", TAMING)


# -- LlamaGen --------------------------------------------------------------------------------------
def llamagen_vq_key(name: str, levels: int) -> str:
    """bigtrain's ``vq`` key as LlamaGen's ``VQModel`` names it (written independently of the converter)."""
    name = re.sub(r"\.mid\.block_1\.", ".mid.0.", name)
    name = re.sub(r"\.mid\.attn_1\.", ".mid.1.", name)
    name = re.sub(r"\.mid\.block_2\.", ".mid.2.", name)
    name = re.sub(r"^encoder\.down\.(\d+)\.block\.", r"encoder.conv_blocks.\1.res.", name)
    name = re.sub(r"^encoder\.down\.", "encoder.conv_blocks.", name)
    m = re.match(r"^decoder\.up\.(\d+)\.(\w+)(\..*)$", name)
    if m:
        name = f"decoder.conv_blocks.{levels - 1 - int(m.group(1))}.{m.group(2).replace('block', 'res')}{m.group(3)}"
    return name


def _llamagen_vq_file(path: Path, vq_state: dict, d_state: dict | None) -> None:
    model = {llamagen_vq_key(k, 3): v for k, v in vq_state.items() if not k.endswith(BOOKKEEPING)}
    model["quantize.codebook_used"] = torch.zeros(65536)
    out = {"model": model, "steps": 77, "args": argparse.Namespace(vq_model="VQ-16", codebook_embed_dim=8)}
    torch.save(out | ({"discriminator": d_state} if d_state is not None else {}), path)


def test_llamagen_vq_converts_and_reconstructs(tmp_path: Path) -> None:
    vq, d = _networks(8, l2_normalize=True)
    vq_state, d_state = _randomised(vq), _randomised(d)
    _llamagen_vq_file(tmp_path / "vq_ds16_c2i.pt", vq_state, d_state)
    # the format's preset (the default overrides) at a small size
    small = [*SMALL_VQ, "model.arch.embed_dim=8"]
    ck = convert("llamagen-vq", tmp_path / "vq_ds16_c2i.pt", tmp_path / "run", small)
    opened = open_checkpoint(ck)
    assert opened.step == 77 and opened.meta["converted_from"]["placeholders"] == ["argparse.Namespace"]
    assert sorted(opened.meta["converted_from"]["components"]) == ["D", "vq"]
    _assert_same(opened.load("vq", weights_only=True), vq_state, "vq")
    _assert_same(opened.load("D", weights_only=True), d_state, "D")
    m = bigtrain.load(tmp_path / "run", device="cpu")
    assert m.vq.quantize.l2_normalize and m.vq.quantize.beta_on == "commitment"
    x = torch.rand(2, 3, RES, RES, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        want = vq.eval()(x)[0].clamp(-1, 1)
    torch.testing.assert_close(m.reconstruct(x), want, rtol=0, atol=1e-6)
    # attention elsewhere than the lowest level: LlamaGen's layout has no place for it
    with pytest.raises(CheckpointError, match=r"no tensor encoder\.conv_blocks\.1\.attn\.0\.norm\.weight .*"
                       r"model.arch.attn_resolutions=\[8\]$"):  # fmt: skip
        convert(
            "llamagen-vq",
            tmp_path / "vq_ds16_c2i.pt",
            tmp_path / "run-b",
            [*small, "model.arch.attn_resolutions=[8,16]"],
        )


GPT = {"dim": 32, "layers": 2, "heads": 4, "classes": 5}
GPT_OVERRIDES = ["data.path=/nonexistent", "data.num_classes=5", "prior.engine=torch", "model.arch.dim=32", "model.arch.layers=2",
                 "model.arch.heads=4"]  # fmt: skip


def llamagen_gpt_key(name: str) -> str:
    """bigtrain's ``prior`` key as LlamaGen's ``Transformer`` names it (independently of the converter)."""
    for ours, theirs in [("tok_emb.", "tok_embeddings."), ("cls_emb.", "cls_embedding.embedding_table."),
                         ("ln_f.", "norm."), ("head.", "output."), ("attn.qkv.", "attention.wqkv."),
                         ("attn.proj.", "attention.wo."), ("mlp.", "feed_forward."), ("ln1.", "attention_norm."),
                         ("ln2.", "ffn_norm.")]:  # fmt: skip
        name = re.sub(rf"(^|\.){re.escape(ours)}", rf"\g<1>{theirs}", name)
    return re.sub(r"^blocks\.", "layers.", name)


def _prior(grid: int) -> tuple[TokenPrior, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    net = TokenPrior(PriorConfig(vocab=CODES, seq_len=grid * grid, num_classes=GPT["classes"], dim=GPT["dim"],
                                 layers=GPT["layers"], heads=GPT["heads"], block="llama", positions="rope2d"))  # fmt: skip
    return net, _randomised(net)


def _gpt_file(path: Path, net: TokenPrior, state: dict, **drop: bool) -> None:
    model = {llamagen_gpt_key(k): v for k, v in state.items()}
    model["freqs_cis"] = torch.stack([net.rope_cos, net.rope_sin], dim=-1)  # LlamaGen keeps its table
    for k in drop:
        del model[k]
    torch.save({"model": model, "steps": 5000, "args": argparse.Namespace(gpt_model="GPT-B")}, path)


def test_llamagen_gpt_converts_and_generates_through_its_tokenizer(tmp_path: Path) -> None:
    vq, d = _networks(16)
    _taming_file(tmp_path / "last.ckpt", _randomised(vq), _randomised(d))
    tok = convert("taming", tmp_path / "last.ckpt", tmp_path / "tok", TAMING)
    net, state = _prior(RES // 4)
    _gpt_file(tmp_path / "c2i.pt", net, state)
    out = run_cli("convert", "llamagen-gpt", str(tmp_path / "c2i.pt"), str(tmp_path / "run"), *GPT_OVERRIDES,
                  "--tokenizer", str(tok))  # fmt: skip
    line = json.loads(out.stdout.strip().splitlines()[-1])
    assert line["step"] == 5000 and line["components"] == ["prior"]
    opened = open_checkpoint(line["checkpoint"])
    tokens = opened.meta["dataset"]["extra"]
    assert tokens["tokens"] == {"grid": [8, 8], "vocab": CODES, "dtype": "uint16"}
    assert tokens["tokenizer"]["checkpoint"] == str(tok.resolve())
    assert tokens["tokenizer"]["digest"] == open_checkpoint(tok).meta["digests"]["vq"]
    _assert_same(opened.load("prior", weights_only=True), state, "prior")
    m = bigtrain.load(tmp_path / "run", device="cpu")
    images, codes = m.generate(2, classes=[3], seed=0, return_codes=True)
    assert images.shape == (2, 3, RES, RES) and codes.shape[0] == 2 and torch.isfinite(images).all()
    seq = torch.randint(0, CODES, (2, 63), generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([1, 4])
    with torch.no_grad():
        torch.testing.assert_close(m.net(seq, labels), net.eval()(seq, labels), rtol=0, atol=0)


def test_llamagen_gpt_files_that_do_not_fit_are_one_line(tmp_path: Path) -> None:
    small = [*GPT_OVERRIDES, "model.arch.vocab=64", "model.arch.token_grid=8"]
    net, state = _prior(8)
    _gpt_file(tmp_path / "a.pt", net, state)
    with pytest.raises(CheckpointError, match=r"a\.pt: tensor tok_embeddings\.weight is \[64, 32\], bigtrain's "
                       r"prior\.tok_emb\.weight is \[64, 48\]; the file's GPT: model\.arch\.dim=32 "
                       r"model\.arch\.layers=2, a 64-code vocabulary, 5 classes$"):  # fmt: skip
        convert("llamagen-gpt", tmp_path / "a.pt", tmp_path / "run-a", [*small, "model.arch.dim=48"])
    with pytest.raises(CheckpointError, match=r"a\.pt: tensor freqs_cis is \[65, 4, 2\], bigtrain's 2-D rotary "
                       r"table is \[17, 4, 2\]"):  # fmt: skip
        convert("llamagen-gpt", tmp_path / "a.pt", tmp_path / "run-b", [*small, "model.arch.token_grid=4"])
    _gpt_file(tmp_path / "b.pt", net, state, **{"layers.1.ffn_norm.weight": True})
    with pytest.raises(CheckpointError, match=r"b\.pt: no tensor layers\.1\.ffn_norm\.weight \(bigtrain's prior\."
                       r"blocks\.1\.ln2\.weight\)"):  # fmt: skip
        convert("llamagen-gpt", tmp_path / "b.pt", tmp_path / "run-c", small)

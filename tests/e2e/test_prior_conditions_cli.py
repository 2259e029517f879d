"""Conditioned priors as a user runs them (issue 17, 4b and 5): text-to-image
(`experiment=mnist_text_transformer` on captioned token shards; a caption transformer trained with
the prior, or a local Hugging Face encoder) and taming's cond-transformer
(`experiment=mnist_edges_transformer` on token shards of (outline, digit) pairs). Each trains,
resumes exactly (digests of a straight and an interrupted twin), runs on 2 processes, and samples
from the CLI with its condition, also at twice the training size."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from bigtrain.data.manifest import DatasetManifest
from bigtrain.data.tokenize import read_conditions, read_tokens
from tests.conftest import PRIOR_SMALL, run_cli, tiny_hf_encoder
from tests.e2e.test_prior_cli import _torchrun, _twins

CELL = 34  # a 32-pixel digit and save_grid's 2-pixel padding


def _grid_size(path: Path) -> tuple[int, int]:
    return Image.open(path).size


def test_paired_tokens_carry_the_sources_codes(edge_tokens: Path, mnist_edges: Path) -> None:
    m = DatasetManifest.load(edge_tokens)
    cond = m.extra["condition"]
    assert cond["grid"] == [8, 8] and cond["vocab"] == m.extra["tokens"]["vocab"]
    assert cond["tokenizer"]["digest"] == m.extra["tokenizer"]["digest"]  # one tokenizer by default
    codes, labels, _ = read_tokens(m, "val")
    conds, cond_labels = read_conditions(m, "val")
    assert conds.shape == codes.shape == (500, 8, 8) and (labels == cond_labels).all()
    assert (conds != codes).any()  # an outline is coded otherwise than its digit
    assert m.count("train") == DatasetManifest.load(mnist_edges).count("train")


def test_a_second_tokenizer_codes_the_sources(
    small_tokenizer: Path, mnist_edges: Path, mnist_shards: Path, edge_tokens: Path, tmp_path: Path
) -> None:
    """``--condition-tokenizer``: the sources through another checkpoint (a copy of the same weights
    elsewhere, so the codes can be compared), recorded as the condition's tokenizer; for a set
    without pairs it is refused in one line."""
    other = tmp_path / "cond-tok"
    shutil.copytree(small_tokenizer, other)
    out = tmp_path / "t"
    run_cli("tokenize", str(small_tokenizer), str(mnist_edges), str(out), "--condition-tokenizer", str(other))
    m = DatasetManifest.load(out)
    assert m.extra["condition"]["tokenizer"]["checkpoint"] == str(other.resolve())
    assert m.extra["tokenizer"]["checkpoint"] == str(small_tokenizer.resolve())
    conds, _ = read_conditions(m, "val")
    same, _ = read_conditions(DatasetManifest.load(edge_tokens), "val")
    assert conds.shape == (500, 8, 8) and (conds == same).all()
    refused = run_cli("tokenize", str(small_tokenizer), str(mnist_shards), str(tmp_path / "x"),
                      "--condition-tokenizer", str(other), check=False)  # fmt: skip
    last = refused.stderr.strip().splitlines()[-1]
    assert refused.returncode != 0 and "paired set" in last and "images" in last


def test_text_prior_trains_resumes_exactly_and_draws_prompts(caption_tokens: Path, tmp_path: Path) -> None:
    common = ("train", "experiment=mnist_text_transformer", f"data.path={caption_tokens}",
              "tracking.enabled=false", "eval.every=4", *PRIOR_SMALL)  # fmt: skip
    straight, a, b = _twins(run_cli, common, tmp_path)
    assert a == b and {"prior", "task"} <= set(a)
    ck = straight / "checkpoints" / "step-00000004"
    judged = run_cli("evaluate", str(ck), "eval.num_samples=20")
    assert "class_agreement/digits" in judged.stdout and "attribute_agreement/thickness" in judged.stdout
    # the grid: one row per prompt of the digit captions, 4 samples each
    assert _grid_size(straight / "samples" / "step-00000004.png") == (4 * CELL + 2, 4 * CELL + 2)

    out = tmp_path / "prompts.png"
    run_cli(
        "sample", str(ck), "--out", str(out), "--prompt", "a thick seven", "--prompt", "a one", "--rows", "3"
    )
    assert _grid_size(out) == (3 * CELL + 2, 2 * CELL + 2)
    big = tmp_path / "big.png"
    run_cli("sample", str(ck), "--out", str(big), "--prompt", "a seven", "--rows", "2", "--size", "2x")
    assert _grid_size(big) == (2 * 66 + 2, 66 + 2)  # 64-pixel images from a 16x16 code grid
    for wrong in (["--condition", str(big)], []):  # a text prior needs a prompt
        refused = run_cli("sample", str(ck), "--out", str(out), *wrong, check=False)
        assert refused.returncode != 0 and "--prompt" in refused.stderr.strip().splitlines()[-1]
    refused = run_cli("export", str(ck), str(tmp_path / "export"), check=False)
    assert refused.returncode != 0 and "no export format yet" in refused.stderr.strip().splitlines()[-1]
    npz = tmp_path / "s.npz"
    run_cli("sample", str(ck), "--num-samples", "6", "--npz", str(npz), "--batch-size", "4")
    assert npz.is_file()


def test_edge_prior_trains_resumes_exactly_and_draws_for_condition_images(
    edge_tokens: Path, mnist_edges: Path, tmp_path: Path
) -> None:
    common = ("train", "experiment=mnist_edges_transformer", f"data.path={edge_tokens}",
              "tracking.enabled=false", "eval.every=4", *PRIOR_SMALL)  # fmt: skip
    straight, a, b = _twins(run_cli, common, tmp_path)
    assert a == b
    ck = straight / "checkpoints" / "step-00000004"
    # the grid: one row per validation outline, the outline (decoded from its codes) first
    assert _grid_size(straight / "samples" / "step-00000004.png") == (4 * CELL + 2, 4 * CELL + 2)

    folder = tmp_path / "outlines"
    folder.mkdir()
    shard = sorted(mnist_edges.glob("val-*.tar"))[0]
    for i, sample in enumerate(wds.WebDataset(str(shard), shardshuffle=False)):
        (folder / f"{i}.png").write_bytes(sample["src.png"])
        if i == 2:
            break
    out = tmp_path / "drawn.png"
    run_cli("sample", str(ck), "--out", str(out), "--condition", str(folder), "--rows", "2")
    assert _grid_size(out) == (2 * CELL + 2, 3 * CELL + 2)  # 3 conditions beside their outputs
    big = tmp_path / "big.png"
    run_cli("sample", str(ck), "--out", str(big), "--condition", str(folder / "0.png"), "--size", "2x")
    assert Image.open(big).size[1] == 66 + 2
    refused = run_cli("sample", str(ck), "--out", str(out), "--prompt", "a seven", check=False)
    assert refused.returncode != 0 and "does not sample from text" in refused.stderr.strip().splitlines()[-1]
    bad = run_cli(
        "sample", str(ck), "--out", str(out), "--size", "1.3x", "--condition", str(folder), check=False
    )
    assert bad.returncode != 0 and "whole grid" in bad.stderr.strip().splitlines()[-1]
    judged = run_cli("evaluate", str(ck), "eval.metrics=[fid,class_agreement]", "eval.num_samples=20")
    assert "class_agreement/digits" in judged.stdout


def test_conditioned_priors_on_two_processes(caption_tokens: Path, edge_tokens: Path, tmp_path: Path) -> None:
    """ZeRO-2 over 2 ranks: the text prior resumes exactly; the edge prior trains and samples."""
    common = ("train", "experiment=mnist_text_transformer", f"data.path={caption_tokens}",
              "tracking.enabled=false", "eval.enabled=false", *PRIOR_SMALL)  # fmt: skip
    _, a, b = _twins(_torchrun, common, tmp_path / "text")
    assert a == b and "deepspeed/zero_pp_rank_1_mp_rank_00_optim_states" in a
    run = tmp_path / "edges"
    _torchrun("train", "experiment=mnist_edges_transformer", f"data.path={edge_tokens}", f"run.dir={run}",
              "tracking.enabled=false", "eval.enabled=false", *PRIOR_SMALL, "trainer.max_steps=2")  # fmt: skip
    assert (run / "checkpoints" / "step-00000002" / "meta.json").is_file()


def test_text_prior_with_a_local_hugging_face_encoder(caption_tokens: Path, tmp_path: Path) -> None:
    folder = tiny_hf_encoder(tmp_path / "bert")
    common = ("train", "experiment=mnist_text_transformer", f"data.path={caption_tokens}",
              "tracking.enabled=false", "eval.enabled=false", *PRIOR_SMALL, "text.encoder=hf",
              f"text.hf_path={folder}")  # fmt: skip
    _, a, b = _twins(run_cli, common, tmp_path)
    assert a == b
    ck = tmp_path / "a" / "checkpoints" / "step-00000004"
    out = tmp_path / "p.png"
    run_cli("sample", str(ck), "--out", str(out), "--prompt", "a thick seven", "--rows", "2")
    assert _grid_size(out) == (2 * CELL + 2, CELL + 2)
    # another encoder under the same path: refused, not silently used
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + bytes(8))  # the last tensor's last values changed
    changed = run_cli("sample", str(ck), "--out", str(out), "--prompt", "a one", check=False)
    assert changed.returncode != 0 and "another encoder" in changed.stderr.strip().splitlines()[-1]
    gone = run_cli(*common[:-1], "text.hf_path=/nonexistent/enc", f"run.dir={tmp_path / 'c'}", check=False)
    last = gone.stderr.strip().splitlines()[-1]
    assert gone.returncode != 0 and "/nonexistent/enc" in last and "save_pretrained" in last


@pytest.mark.parametrize("key", ["text.encoder=t5", "prior.condition=audio"])
def test_a_wrong_condition_setting_is_one_line(caption_tokens: Path, tmp_path: Path, key: str) -> None:
    proc = run_cli("train", "experiment=mnist_text_transformer", f"data.path={caption_tokens}", key,
                   f"run.dir={tmp_path}", "tracking.enabled=false", *PRIOR_SMALL, check=False)  # fmt: skip
    assert proc.returncode != 0
    assert key.split("=")[0] in proc.stderr.strip().splitlines()[-1]

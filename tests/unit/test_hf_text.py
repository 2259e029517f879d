"""A local Hugging Face text encoder for a text-conditioned prior: read from a folder with no network,
frozen, fixed-length features with padding zeroed; a missing folder is one line naming it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bigtrain.errors import ConfigError
from bigtrain.models.hf_text import FrozenTextEncoder
from bigtrain.train.prior_conditions import hf_feature_width
from tests.conftest import tiny_hf_encoder


def test_features_of_a_local_encoder(tmp_path: Path) -> None:
    folder = tiny_hf_encoder(tmp_path / "bert")
    enc = FrozenTextEncoder(folder, max_len=8, device=torch.device("cpu"))
    assert enc.dim == 24 == hf_feature_width(str(folder))
    feats = enc(["a thick seven", "a one"])
    assert feats.shape == (2, 8, 24) and feats.dtype == torch.float32
    # "[CLS] a one [SEP]" is 4 tokens: the rest is padding, zeroed
    assert torch.all(feats[1, 4:] == 0) and torch.all(feats[1, :4].abs().sum(-1) > 0)
    assert not any(p.requires_grad for p in enc.model.parameters())
    again = FrozenTextEncoder(folder, max_len=8, device=torch.device("cpu"))
    assert again.digest == enc.digest and torch.equal(again(["a one"]), feats[1:])


@pytest.mark.parametrize("path", ["", "/nonexistent/encoder"])
def test_a_missing_encoder_is_one_line(path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        FrozenTextEncoder(path, max_len=8, device=torch.device("cpu"))
    message = str(caught.value)
    assert "\n" not in message and "save_pretrained" in message
    assert hf_feature_width(path) == 0


def test_a_folder_without_weights_is_one_line(tmp_path: Path) -> None:
    folder = tiny_hf_encoder(tmp_path / "bert")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ConfigError) as caught:
        FrozenTextEncoder(folder, max_len=8, device=torch.device("cpu"))
    assert "\n" not in str(caught.value) and "cannot load it" in str(caught.value)

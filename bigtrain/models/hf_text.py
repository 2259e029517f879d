"""A frozen Hugging Face text encoder read from a local folder: one way a text-conditioned prior
gets its caption features (``text.encoder=hf``; the other trains a small encoder with the prior).

Nothing is downloaded: the folder is what ``save_pretrained`` wrote (the model's ``config.json`` and
weights, and its tokenizer's files), filled once on a machine with internet and copied to the
cluster. Loading passes ``local_files_only``, so a missing or partial folder is a one-line error
naming the path, never a network call. An encoder-decoder model (T5, as LlamaGen's text-to-image
GPT uses) contributes its encoder only.

The features are ``last_hidden_state`` at ``max_len`` positions (padded or cut), padding positions
zeroed; the weights' digest is recorded with the run, so sampling later refuses another encoder
under the same path.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from bigtrain.errors import ConfigError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def weights_digest(folder: Path) -> str:
    """sha256 over the folder's weight files (name and bytes, in name order)."""
    h = hashlib.sha256()
    for f in sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


class FrozenTextEncoder:
    """``encoder(captions) -> [B, max_len, dim]`` features of a local Hugging Face encoder."""

    def __init__(self, path: str | Path, max_len: int, device: torch.device) -> None:
        folder = Path(path).expanduser()
        fix = (
            "save one with AutoModel.from_pretrained(NAME).save_pretrained(PATH) and "
            "AutoTokenizer.from_pretrained(NAME).save_pretrained(PATH) where there is internet, then copy PATH"
        )
        if not str(path):
            raise ConfigError(
                f"text.encoder=hf needs text.hf_path=PATH, a local Hugging Face model folder; {fix}"
            )
        if not (folder / "config.json").is_file():
            raise ConfigError(
                f"text.hf_path={folder}: no Hugging Face model there (config.json missing); {fix}"
            )
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError:
            raise ConfigError("text.encoder=hf needs transformers: pip install 'bigtrain[text]'") from None
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            model = AutoModel.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"text.hf_path={folder}: cannot load it ({first}); {fix}") from None
        if getattr(model.config, "is_encoder_decoder", False):
            model = model.get_encoder()
        self.model = model.to(device).eval().requires_grad_(False)
        self.dim = int(getattr(model.config, "d_model", None) or model.config.hidden_size)
        self.max_len, self.device = max_len, device
        self.digest = weights_digest(folder)

    @torch.no_grad()
    def __call__(self, captions: Sequence[str]) -> Tensor:
        enc = self.tokenizer(
            list(captions),
            padding="max_length",
            truncation=True,
            max_length=self.max_len,
            return_tensors="pt",
        )
        mask = enc["attention_mask"].to(self.device)
        out = self.model(input_ids=enc["input_ids"].to(self.device), attention_mask=mask).last_hidden_state
        return (out * mask[..., None]).float()


__all__ = ["FrozenTextEncoder", "weights_digest"]

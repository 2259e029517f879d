"""Vector quantisers for the image tokenizer: nearest-codebook-entry lookup with a gradient path.

One module, three choices that the literature combines freely:

* **straight-through** (van den Oord et al. 2017, eq. 3): the codebook is learned by the loss
  ``||sg[z] - e||^2`` and the encoder is pulled towards its codes by the commitment loss
  ``||z - sg[e]||^2``; gradients pass from ``z_q`` to ``z`` unchanged. ``beta`` (0.25 in both the
  VQ-VAE and VQ-GAN papers) weighs one of the two terms, chosen by ``beta_on``:
  ``"commitment"`` is the papers' formula (and taming's ``legacy=False``); ``"codebook"`` is what
  taming-transformers' ``VectorQuantizer2`` computes by default (``legacy=True``), i.e. what the
  released VQGAN models were trained with: ``||sg[z_q] - z||^2 + beta ||z_q - sg[z]||^2``, so the
  encoder is pulled 4x harder and the codebook moves 4x slower than the papers say.
* **EMA codebook** (``ema=True``; VQ-VAE appendix A.1, Razavi et al. 2019): codes are exponential
  moving averages of the encoder outputs assigned to them (Laplace-smoothed cluster sizes), so only
  the commitment term is a loss.
* **l2-normalised codes** (``l2_normalize=True``; Yu et al. 2022, ViT-VQGAN): ``z`` and the codes are
  projected onto the unit sphere before the lookup, i.e. cosine-similarity matching.

Dead codes (not chosen for ``restart_after`` training steps) can be re-initialised from encoder
outputs of the current batch (Dhariwal et al. 2020, Jukebox), which keeps codebook usage high.

The module is single-device: what must agree across processes (EMA statistics, restart choices)
goes through ``reduce`` and ``broadcast`` hooks that the training task sets (identity by default).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class QuantizerOutput:
    z_q: Tensor  # [B, D, H, W], straight-through to z
    loss: Tensor  # scalar: codebook and commitment terms, beta on one (EMA: beta * commitment)
    indices: Tensor  # [B, H, W] long
    perplexity: Tensor  # exp(entropy of this batch's code histogram)


# which of the two straight-through terms beta weighs (the other has weight 1)
BETA_ON = ("codebook", "commitment")


def _identity(t: Tensor) -> Tensor:
    return t


class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantiser of ``[B, D, H, W]`` feature maps to ``num_codes`` codes of size ``dim``."""

    def __init__(
        self,
        num_codes: int,
        dim: int,
        beta: float = 0.25,
        beta_on: str = "codebook",
        ema: bool = False,
        decay: float = 0.99,
        eps: float = 1e-5,
        l2_normalize: bool = False,
        restart_after: int = 0,
    ) -> None:
        super().__init__()
        if num_codes < 2 or dim < 1:
            raise ValueError(f"need num_codes >= 2 and dim >= 1, got {num_codes}, {dim}")
        if beta_on not in BETA_ON:
            raise ValueError(f"beta_on must be one of {', '.join(BETA_ON)}, got {beta_on!r}")
        self.num_codes, self.dim, self.beta, self.beta_on = num_codes, dim, beta, beta_on
        self.ema, self.decay, self.eps = ema, decay, eps
        self.l2_normalize = l2_normalize
        self.restart_after = restart_after
        self.embedding = nn.Embedding(num_codes, dim)
        # The release initialises codes uniformly in +-1/K; small codes are all close to the
        # encoder's output at init, so every code is reachable early on.
        nn.init.uniform_(self.embedding.weight, -1.0 / num_codes, 1.0 / num_codes)
        if ema:
            self.embedding.weight.requires_grad_(False)
            self.register_buffer("cluster_size", torch.zeros(num_codes))
            self.register_buffer("embed_sum", self.embedding.weight.detach().clone())
        # Steps since each code was last chosen (for dead-code restarts), and usage over the
        # current evaluation window (for the usage / perplexity metrics).
        self.register_buffer("unused_steps", torch.zeros(num_codes, dtype=torch.long))
        self.register_buffer("window_counts", torch.zeros(num_codes))
        self.reduce: Callable[[Tensor], Tensor] = _identity  # sum over processes
        self.broadcast: Callable[[Tensor], Tensor] = _identity  # rank 0's tensor on every rank

    def codebook(self) -> Tensor:
        w = self.embedding.weight
        return F.normalize(w, dim=1) if self.l2_normalize else w

    def lookup(self, indices: Tensor) -> Tensor:
        """Codes for ``indices [B, H, W]`` as a ``[B, D, H, W]`` map (the decoder's input)."""
        return self.codebook()[indices].permute(0, 3, 1, 2).contiguous()

    def encode_indices(self, z: Tensor) -> Tensor:
        flat = self._flatten(z.float())
        return self._nearest(flat).view(z.shape[0], z.shape[2], z.shape[3])

    def _flatten(self, z: Tensor) -> Tensor:
        if z.ndim != 4 or z.shape[1] != self.dim:
            raise ValueError(f"expected [B, {self.dim}, H, W], got {list(z.shape)}")
        flat = z.permute(0, 2, 3, 1).reshape(-1, self.dim)
        return F.normalize(flat, dim=1) if self.l2_normalize else flat

    def _nearest(self, flat: Tensor) -> Tensor:
        """The nearest code of each row, in fp32 whatever autocast is on: a bf16 distance matmul
        picks a different code for ~1% of vectors of a 4096-code book, so a tokenizer trained under
        bf16 and ``bigtrain tokenize`` (fp32) would disagree on the tokens."""
        with torch.autocast(flat.device.type, enabled=False):
            codes = self.codebook().float()
            flat = flat.float()
            # ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2; the ||z||^2 term does not change the argmin.
            dist = (codes * codes).sum(1)[None, :] - 2.0 * flat @ codes.t()
            return dist.argmin(dim=1)

    def forward(self, z: Tensor) -> QuantizerOutput:
        with torch.autocast(z.device.type, enabled=False):  # the loss and z_q in fp32 as well
            return self._forward(z)

    def _forward(self, z: Tensor) -> QuantizerOutput:
        flat = self._flatten(z.float())
        idx = self._nearest(flat.detach())
        codes = self.codebook()
        q = codes[idx]
        commitment = F.mse_loss(flat, q.detach())  # pulls the encoder to its code
        if self.ema:  # the codebook learns by averages; only the commitment term is a loss
            loss = self.beta * commitment
        else:
            codebook = F.mse_loss(q, flat.detach())  # pulls the code to the encoder
            if self.beta_on == "commitment":
                loss = codebook + self.beta * commitment
            else:
                loss = commitment + self.beta * codebook
        q = flat + (q - flat).detach()  # straight-through estimator
        b, _, h, w = z.shape
        z_q = q.view(b, h, w, self.dim).permute(0, 3, 1, 2).contiguous().to(z.dtype)
        counts = torch.bincount(idx, minlength=self.num_codes).float()
        if self.training:
            counts = self.reduce(counts)
            with torch.no_grad():
                self.window_counts += counts
                self.unused_steps.add_(1).masked_fill_(counts > 0, 0)
                if self.ema:
                    self._ema_update(flat.detach(), idx, counts)
                if self.restart_after > 0:
                    self._restart_dead(flat.detach())
        probs = counts / counts.sum().clamp(min=1)
        perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
        return QuantizerOutput(z_q, loss, idx.view(b, h, w), perplexity)

    def _ema_update(self, flat: Tensor, idx: Tensor, counts: Tensor) -> None:
        sums = torch.zeros(self.num_codes, self.dim, device=flat.device).index_add_(0, idx, flat.float())
        sums = self.reduce(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.num_codes * self.eps) * n  # Laplace smoothing
        self.embedding.weight.copy_(self.embed_sum / smoothed[:, None])

    def _restart_dead(self, flat: Tensor) -> None:
        dead = (self.unused_steps >= self.restart_after).nonzero().squeeze(1)
        if dead.numel() == 0:
            return
        pick = torch.randint(0, flat.shape[0], (dead.numel(),), device=flat.device)
        new = self.broadcast(flat[pick].clone())  # every process takes rank 0's choice
        self.embedding.weight[dead] = new
        if self.ema:
            self.embed_sum[dead] = new
            self.cluster_size[dead] = 1.0
        self.unused_steps[dead] = 0

    def usage(self, reset: bool = True) -> dict[str, float]:
        """Share of codes used and the perplexity over the window since the last reset."""
        counts = self.window_counts
        total = counts.sum().clamp(min=1)
        probs = counts / total
        out = {
            "usage": float((counts > 0).float().mean()),
            "perplexity": float(torch.exp(-(probs * torch.log(probs + 1e-10)).sum())),
        }
        if reset:
            counts.zero_()
        return out


__all__ = ["BETA_ON", "QuantizerOutput", "VectorQuantizer"]

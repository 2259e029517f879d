"""LPIPS (Zhang et al. 2018) with VGG16 features, as VQ-GAN's perceptual loss.

The ``lpips`` package ships the learned linear heads (``weights/v0.1/vgg.pth``, a few KB); the VGG16
trunk is torchvision's ImageNet model, which bigtrain never downloads: it is read from
``$BIGTRAIN_CACHE/weights/vgg16-397923af.pth`` (torchvision's own file name). A missing file is a
one-line error naming the path and the command that fills it. Tests write a randomly initialised
VGG16 to that path and go through the same loading code.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from bigtrain.errors import MissingWeightsError
from bigtrain.utils.cache import vgg16_weights_path

# torchvision's vgg16().features indices -> LPIPS trunk slice (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3)
_SLICES = ((1, range(0, 4)), (2, range(4, 9)), (3, range(9, 16)), (4, range(16, 23)), (5, range(23, 30)))

FILL_COMMAND = (
    "python -c \"import torchvision; torchvision.models.vgg16(weights='IMAGENET1K_V1')\" on a machine with "
    "internet, then copy ~/.cache/torch/hub/checkpoints/vgg16-397923af.pth to {path}"
)


def _trunk_state(vgg_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """torchvision ``features.N.*`` keys -> the LPIPS trunk's ``sliceK.N.*`` keys."""
    out = {}
    for key, value in vgg_state.items():
        if not key.startswith("features."):
            continue  # the classifier head is not used
        index = int(key.split(".")[1])
        k = next(k for k, r in _SLICES if index in r)
        out[f"slice{k}.{key.split('.', 1)[1]}"] = value
    return out


class LPIPS(nn.Module):
    """``forward(x, y) -> [B]`` perceptual distances for images in [-1, 1]; frozen, always in eval mode."""

    def __init__(self, vgg_weights: str | Path | None = None) -> None:
        super().__init__()
        import lpips

        path = Path(vgg_weights) if vgg_weights is not None else vgg16_weights_path()
        if not path.is_file():
            raise MissingWeightsError(
                f"LPIPS needs VGG16 weights at {path}; fill it once: {FILL_COMMAND.format(path=path)}", path
            )
        logging.getLogger("lpips").setLevel(logging.WARNING)
        with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=False`
            warnings.simplefilter("ignore", UserWarning)
            # pnet_rand: build the trunk without touching the network; pretrained: the package's heads
            self.net = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.net.net.load_state_dict(_trunk_state(state), strict=True)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> LPIPS:  # noqa: ARG002 - a frozen metric network
        return super().train(False)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if x.shape[1] == 1:  # grayscale: VGG sees the same value in R, G and B
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        return self.net(x.float(), y.float(), normalize=False).flatten()


__all__ = ["FILL_COMMAND", "LPIPS"]

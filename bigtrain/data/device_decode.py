"""``data.decode=gpu``: JPEGs decoded and resized on the training device (nvJPEG on a GPU), so CPU
cores stop being what a 128 px BigGAN waits for.

The loader's workers still read, shuffle and label samples, but hand JPEGs over as their encoded
bytes (a tenth of the decoded size), with each sample's crop offset and flip already drawn from the
same per-sample hashes as the CPU path, so resume stays exact. Other formats (PNG, WebP) are decoded
in the worker at their stored size. Here, in the training process, the JPEGs of a batch are decoded
in one ``torchvision.io.decode_jpeg`` call (batched nvJPEG on CUDA; libjpeg-turbo on the CPU, which
is what the tests run), then each image is cropped (or padded) and resized with torch's antialiased
``bilinear`` / ``bicubic`` (PyTorch has no Lanczos), rounded to uint8 as the CPU path rounds, and
flipped.

The pixels differ slightly from the CPU path's (PIL's filters and JPEG draft mode against torch's
filters and a full decode; ``tests/unit/test_device_decode.py`` bounds the difference), while FID
references are still made by the CPU path: with ``data.decode=gpu``, compare FIDs among runs that
decode the same way.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bigtrain.data.images import Resize, decode, has_orientation
from bigtrain.errors import DatasetError

JPEG_KEYS = ("jpg", "jpeg")
DEVICE_FILTERS = ("bilinear", "bicubic")


def decode_batch(
    items: Sequence[np.ndarray | torch.Tensor],
    is_jpeg: Sequence[bool],
    channels: int,
    resolution: int,
    policy: str,
    crop_u: Sequence[float],
    flips: Sequence[bool],
    resample: str,
    device: torch.device,
) -> torch.Tensor:
    """uint8 ``[B, C, R, R]`` on ``device``: ``items`` are encoded JPEG bytes (1-D uint8) where
    ``is_jpeg``, else decoded uint8 ``[H, W, C]`` pixels."""
    if resample not in DEVICE_FILTERS:
        raise ValueError(f"data.decode=gpu resizes with {' or '.join(DEVICE_FILTERS)}, not {resample}")
    images: list[torch.Tensor | None] = [None] * len(items)
    jpeg_at = [i for i, j in enumerate(is_jpeg) if j]
    if jpeg_at:
        # arrays, or tensors when a loader worker sent them (its default_convert makes tensors)
        data = [torch.as_tensor(items[i]) for i in jpeg_at]
        for i, img in zip(jpeg_at, _decode_jpegs(data, channels, device), strict=True):
            images[i] = img
    for i, item in enumerate(items):
        if images[i] is None:
            # a tensor from a loader worker, or a (read-only) array decoded in this process
            pixels = item if isinstance(item, torch.Tensor) else torch.from_numpy(np.array(item))
            images[i] = pixels.permute(2, 0, 1).to(device)
    out = [
        _fit(img, resolution, policy, u, resample, flip)
        for img, u, flip in zip(images, crop_u, flips, strict=True)  # type: ignore[arg-type]
    ]
    return torch.stack(out)


def device_ready(data: bytes) -> bool:
    """A JPEG the device decoder takes as it is: L or RGB (not CMYK), upright (nvJPEG ignores EXIF
    orientation) and complete (ends with its EOI marker). The worker reads only the header; any
    other image is decoded on the CPU, where a bad one is skipped and counted."""
    if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return False
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.format == "JPEG" and im.mode in ("L", "RGB") and not has_orientation(im)
    except (OSError, ValueError, SyntaxError):
        return False


def _decode_jpegs(data: list[torch.Tensor], channels: int, device: torch.device) -> list[torch.Tensor]:
    """One batched call; if it fails, one image at a time, and PIL for an image the device refuses
    (a JPEG feature nvJPEG lacks). An image neither can decode stops the run in one line."""
    from torchvision.io import ImageReadMode, decode_jpeg

    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision 0.29's notice that TorchCodec will take over
        try:
            return list(decode_jpeg(data, mode=mode, device=device))
        except RuntimeError:
            out = []
            for d in data:
                try:
                    out.append(decode_jpeg(d, mode=mode, device=device))
                except RuntimeError:
                    try:
                        arr = decode(d.numpy().tobytes(), channels)
                    except (OSError, ValueError, SyntaxError) as exc:
                        raise DatasetError(
                            f"a JPEG that passed the header check does not decode ({exc}); train with "
                            f"data.decode=cpu, which skips and counts such samples"
                        ) from exc
                    out.append(torch.from_numpy(arr).permute(2, 0, 1).to(device))
            return out


def _fit(
    img: torch.Tensor, resolution: int, policy: str, u: float, resample: str, flip: bool
) -> torch.Tensor:
    """One ``[C, H, W]`` uint8 image to ``[C, R, R]`` uint8, by the rules of
    :func:`bigtrain.data.images.fit` (source crop first, then one resize)."""
    c, h, w = img.shape
    r = resolution
    if policy == Resize.pad:
        scale = r / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        small = _resize(img, nh, nw, resample, shrink=scale < 1)
        top, left = (r - nh) // 2, (r - nw) // 2
        out = F.pad(small, (left, r - nw - left, top, r - nh - top))
    else:
        side = min(h, w)
        if policy == Resize.random:
            top, left = round((h - side) * u), round((w - side) * u)
        else:
            top, left = (h - side) // 2, (w - side) // 2
        crop = img[:, top : top + side, left : left + side]
        out = crop if side == r else _resize(crop, r, r, resample, shrink=side > r)
    return out.flip(-1) if flip else out


def _resize(img: torch.Tensor, h: int, w: int, resample: str, shrink: bool) -> torch.Tensor:
    x = img[None].float()
    # antialiasing only when shrinking (PIL's filters widen with the scale the same way); growing is
    # bicubic, as the CPU path grows
    mode = resample if shrink else "bicubic"
    y = F.interpolate(x, size=(h, w), mode=mode, antialias=shrink, align_corners=False)
    return y.round_().clamp_(0, 255)[0].to(torch.uint8)

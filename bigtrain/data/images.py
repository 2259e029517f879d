"""One image, from bytes or a file to a uint8 array at the training resolution: the pixel rules that
``bigtrain prepare``, the training stream, FID references and ``bigtrain tokenize`` all share.

Why one module: an image must look the same whether it was resized once by ``prepare`` or at train
time from a foreign shard, and the FID reference set must be decoded exactly as the training images
are. Real-world files are messy, so conversion handles what ImageNet and web scrapes contain:
EXIF-rotated phone photos, CMYK and grayscale JPEGs, palette PNGs with transparency and 16-bit
PNGs, which a bare ``Image.convert("RGB")`` gets wrong (it clips 16-bit values to white and turns
transparent pixels black).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from enum import StrEnum

import numpy as np
from PIL import Image, ImageOps

# file suffixes a source folder may hold (compared lower-case: ImageNet's files end in .JPEG)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# WebDataset sample keys that hold an image, in the order they are looked for
IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")
# a paired sample's parts (layout "pairs"): the target is "the image" to every one-image reader
TARGET_KEYS = tuple(f"tgt.{k}" for k in IMAGE_KEYS)
SOURCE_KEYS = tuple(f"src.{k}" for k in IMAGE_KEYS)
FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}


class Resize(StrEnum):
    """How an image that is not ``R x R`` becomes one."""

    center = "center"  # shorter side to R, centre crop (BigGAN-PyTorch's and ADM's ImageNet rule)
    random = "random"  # shorter side to R, a crop at a seeded random offset along the longer side
    pad = "pad"  # longer side to R, black bars on the shorter side (nothing is cut off)
    shorter = "shorter"  # shorter side to R only (prepare-time: keeps room for a train-time random crop)


def to_mode(img: Image.Image, channels: int) -> Image.Image:
    """``img`` as ``L`` (1 channel) or ``RGB`` (3), upright, with 16-bit values scaled (not clipped)
    and transparent pixels over white."""
    img = ImageOps.exif_transpose(img) if has_orientation(img) else img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        # 16-bit PNGs open as I or I;16: scale 0..65535 to 0..255; float images are taken as 0..1
        scale = 1 / 257 if img.mode != "F" else 255.0
        img = Image.fromarray(np.rint(arr * scale).clip(0, 255).astype(np.uint8), "L")
    if img.mode in ("P", "L", "RGB") and "transparency" in img.info:
        img = img.convert("RGBA")  # a palette's or a PNG tRNS chunk's transparent colour: over white below
    if img.mode == "P":
        img = img.convert("RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    want = "L" if channels == 1 else "RGB"
    return img if img.mode == want else img.convert(want)


def has_orientation(img: Image.Image) -> bool:
    if "exif" not in img.info and img.format != "TIFF":
        return False  # no EXIF block read with the header (JPEG, WebP, PNG): no rotation, no parsing
    try:
        return img.getexif().get(0x0112, 1) != 1
    except Exception:  # a malformed EXIF block: take the pixels as stored
        return False


def to_pil(image: np.ndarray | Image.Image, channels: int) -> Image.Image:
    """An array or image as ``L`` or ``RGB`` (see :func:`to_mode`)."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(image)
    return to_mode(img, channels)


FILTERS = {
    "lanczos": Image.Resampling.LANCZOS,
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
}


def fit(
    img: Image.Image,
    resolution: int,
    policy: Resize | str = Resize.center,
    u: float = 0.5,
    resample: str = "lanczos",
) -> Image.Image:
    """``img`` resized by ``policy`` with the ``resample`` filter when shrinking (bicubic when
    growing). ``u`` in [0, 1) places the ``random`` crop (0.5 is the centre).

    A crop is taken from the source first and only the kept square is filtered (PIL's ``box``): for
    a 4:3 photo that skips a quarter of the filtering work, and the result differs from resizing
    the whole image and then cropping only at the sub-pixel placement of the crop."""
    policy = Resize(policy)
    w, h = img.size
    if (w, h) == (resolution, resolution):
        return img
    side = min(w, h) if policy != Resize.pad else max(w, h)
    scale = resolution / side
    flt = FILTERS[resample] if scale < 1 else Image.Resampling.BICUBIC
    if policy == Resize.shorter:
        return img.resize((max(resolution, round(w * scale)), max(resolution, round(h * scale))), flt)
    if policy == Resize.pad:
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        canvas = Image.new(img.mode, (resolution, resolution))
        canvas.paste(img.resize((nw, nh), flt), ((resolution - nw) // 2, (resolution - nh) // 2))
        return canvas
    # the source square of side min(w, h) that becomes the output: centred, or at offset u
    place = u if policy == Resize.random else 0.5
    left, top = (w - side) * place, (h - side) * place
    if policy == Resize.center:
        left, top = (w - side) // 2, (h - side) // 2  # whole pixels, as a crop of the source
    return img.resize((resolution, resolution), flt, box=(left, top, left + side, top + side))


def box_downsample(arr: np.ndarray, resolution: int) -> np.ndarray:
    """A square uint8 ``[H, W, C]`` image shrunk to ``resolution`` by repeated 2x2 means in float32,
    rounded to uint8 at the end: ProGAN's ``dataset_tool.py`` (``add_image``), which makes each lower
    level of detail this way (it rounds each level for storage and computes the next from the
    unrounded floats, so the stored level equals this). The side must be ``resolution * 2^k``."""
    side = arr.shape[0]
    if arr.shape[1] != side or side % resolution or (side // resolution) & (side // resolution - 1):
        raise ValueError(
            f"box downsampling needs a square image whose side is resolution x 2^k, got "
            f"{arr.shape[1]}x{side} for {resolution}"
        )
    img = arr.astype(np.float32)
    while img.shape[0] > resolution:
        img = (img[0::2, 0::2] + img[0::2, 1::2] + img[1::2, 0::2] + img[1::2, 1::2]) * 0.25
    return np.rint(img).clip(0, 255).astype(np.uint8)


def downsample(
    img: Image.Image,
    resolution: int,
    method: str = "lanczos",
    policy: Resize | str = Resize.center,
    u: float = 0.5,
) -> np.ndarray:
    """``img`` at ``resolution`` as uint8 ``[H, W]`` or ``[H, W, C]``: ``lanczos`` as :func:`fit`
    with ``policy``, or ``box`` (:func:`box_downsample`, for square images of side R x 2^k)."""
    if method == "box" and img.size != (resolution, resolution):
        arr = np.asarray(img, dtype=np.uint8)
        squeeze = arr.ndim == 2
        out = box_downsample(arr[..., None] if squeeze else arr, resolution)
        return out[..., 0] if squeeze else out
    return np.asarray(fit(img, resolution, policy, u, method), dtype=np.uint8)


def image_key(sample: Mapping[str, object]) -> str:
    """The key of ``sample``'s image (``png``, ``jpg``, ``jpeg`` or ``webp``), or of its target when
    it is a pair (``tgt.png``, ...): so FID references, ``bigtrain index`` and a plain stream read a
    paired dataset's targets as its images. KeyError if it has none."""
    for k in (*TARGET_KEYS, *IMAGE_KEYS):
        if k in sample:
            return k
    raise KeyError(f"no image ({'/'.join(IMAGE_KEYS)}) among {_members(sample)}")


def source_key(sample: Mapping[str, object]) -> str:
    """The key of a paired sample's source image (``src.png``, ...); KeyError if it has none."""
    for k in SOURCE_KEYS:
        if k in sample:
            return k
    raise KeyError(f"no source image ({'/'.join(SOURCE_KEYS)}) among {_members(sample)}")


def image_format(key: str) -> str:
    """The image format a sample key names: ``jpg`` for ``jpg`` and ``tgt.jpg`` alike."""
    return key.rsplit(".", 1)[-1]


def _members(sample: Mapping[str, object]) -> list[str]:
    return sorted(k for k in sample if not k.startswith("__"))


def decode(
    data: bytes,
    channels: int,
    resolution: int | None = None,
    policy: Resize | str = Resize.center,
    u: float = 0.5,
    method: str = "lanczos",
    draft: bool = True,
) -> np.ndarray:
    """Encoded image bytes -> uint8 ``[H, W, C]`` at ``resolution`` (None: as stored).

    With ``draft``, a JPEG much larger than the target is decoded at 1/2, 1/4 or 1/8 scale by
    libjpeg itself (PIL's draft mode), never below ``resolution`` on either side; that skips most of
    the decode work for ImageNet-sized photos going to 128 px, and the Lanczos filter then does the
    rest. It changes pixels slightly against a full decode, the same way for training and FID."""
    with Image.open(io.BytesIO(data)) as im:
        if draft and resolution is not None and im.format == "JPEG" and method != "box":
            im.draft("L" if channels == 1 else "RGB", (resolution, resolution))
        img = to_mode(im, channels)
        if resolution is not None and img.size != (resolution, resolution):
            arr = downsample(img, resolution, method, policy, u)
        else:
            arr = np.asarray(img, dtype=np.uint8)
    return arr if arr.ndim == 3 else arr[:, :, None]


def encode(img: Image.Image, fmt: str = "png", quality: int = 95) -> bytes:
    """``img`` as ``png`` (fast zlib level 1, lossless), ``jpg`` or ``webp`` at ``quality``."""
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG", compress_level=1)
    elif fmt in FORMATS:
        img.save(buf, format=FORMATS[fmt], quality=quality)
    else:
        raise ValueError(f"unknown image format '{fmt}' (choose png, jpg or webp)")
    return buf.getvalue()


def stream_method(stage_downsample: str, resample: str) -> str:
    """The stream's shrinking method: ProGAN's ``box`` when the stages ask for it, else the filter."""
    return "box" if stage_downsample == "box" else resample


def recipe(method: str, policy: str) -> str:
    """How evaluation images are made, as one string (``downsample`` of an EvalSource): the filter,
    then ``:pad`` when images are padded. A random crop is a training augmentation: its reference
    images are centre crops."""
    return method if policy in (Resize.center, Resize.random) else f"{method}:{policy}"


def parse_recipe(value: str) -> tuple[str, str]:
    """``"bicubic:pad"`` -> ``("bicubic", "pad")``; a bare filter is a centre crop."""
    method, _, policy = value.partition(":")
    return method, policy or Resize.center.value


def unit_hash(*parts: object) -> float:
    """A number in [0, 1) that depends only on ``parts``: stateless per-sample randomness (crops,
    flips) that a resumed stream reproduces without any saved RNG."""
    h = hashlib.blake2b("-".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64

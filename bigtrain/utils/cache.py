"""Where bigtrain keeps things computed or filled once: network weights, the digits feature
network, FID reference statistics.

Owning this location (instead of clean-fid's /tmp and site-packages defaults) keeps the cache on a
disk the user chose, shared between runs, and never inside an installed package. The weights'
paths live here, at the bottom of the package, because both the FID features (``eval``) and the
perceptual loss (``losses``) read them.
"""

from __future__ import annotations

import os
from pathlib import Path

from filelock import FileLock

INCEPTION_FILENAME = "inception-2015-12-05.pt"
"""The torchscript Inception file clean-fid uses (StyleGAN2-ADA's export of the TF 2015-12-05 graph)."""
VGG16_FILENAME = "vgg16-397923af.pth"
"""torchvision's ImageNet VGG16 file, the trunk of LPIPS."""


def cache_dir() -> Path:
    """The bigtrain cache: ``$BIGTRAIN_CACHE`` or ``~/.cache/bigtrain``, created on first use."""
    root = os.environ.get("BIGTRAIN_CACHE")
    path = Path(root).expanduser() if root else Path.home() / ".cache" / "bigtrain"
    path.mkdir(parents=True, exist_ok=True)
    return path


def inception_weights_path() -> Path:
    """Where bigtrain expects clean-fid's Inception torchscript file (never clean-fid's /tmp default)."""
    return cache_dir() / "weights" / INCEPTION_FILENAME


def vgg16_weights_path() -> Path:
    """Where the LPIPS perceptual loss expects torchvision's ImageNet VGG16 weights (never downloaded)."""
    return cache_dir() / "weights" / VGG16_FILENAME


def build_lock(path: Path) -> FileLock:
    """A lock to hold while building the cache file ``path`` (``<cache>/<folder>/<file>``): jobs that
    start together (a sweep, parallel test workers) build it once, the others wait and read it. The
    lock file lives in ``<cache>/locks/``, never beside the cached files."""
    locks = path.parent.parent / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    return FileLock(str(locks / f"{path.parent.name}__{path.name}.lock"))

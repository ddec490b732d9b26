"""Typed run configuration: frozen dataclasses, TOML files, dotted command-line overrides.

A config has four sections, each a frozen dataclass with small working defaults (the
"small" setting that trains on a laptop CPU in minutes)::

    data.corpus=ptb  model.hidden_size=512,512,512  train.lr=0.002  run.out_dir=runs/ptb

Files in ``hmrnn/configs/*.toml``
hold the paper's settings; they use the same section and field names. Unknown keys are
answered with the closest valid one, ill-typed values with the type expected.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import operator
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomllib

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


class ConfigError(ValueError):
    """A config file or override that cannot be used (one line, for the CLI)."""


# -- allowed values ------------------------------------------------------------------------
#
# One table per section: field name -> Rule (a test of the coerced value, and the allowed
# range in words for the message). validate_config() checks every field that has a rule; a
# new field gets its rule in its section's table (tests/test_config.py checks that every
# field has one). Tuple fields are checked item by item.


@dataclass(frozen=True)
class Rule:
    """A field's allowed values: ``test(value)`` is true for them; ``allowed`` says which."""

    test: Callable[[Any], bool]
    allowed: str


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def at_least(low: float) -> Rule:
    return Rule(lambda v: _finite(v) and v >= low, f">= {low:g}")


def positive(high: float | None = None) -> Rule:
    if high is None:
        return Rule(lambda v: _finite(v) and v > 0, "> 0 (and finite)")
    return Rule(lambda v: _finite(v) and 0 < v <= high, f"in (0, {high:g}]")


def one_of(*choices: str) -> Rule:
    return Rule(lambda v: v in choices, "one of " + ", ".join(c or "'' (empty)" for c in choices))


def matches(pattern: str, allowed: str) -> Rule:
    return Rule(lambda v: isinstance(v, str) and re.fullmatch(pattern, v) is not None, allowed)


ANY = Rule(lambda v: True, "any value")
OPEN_UNIT = Rule(lambda v: _finite(v) and 0 < v < 1, "in (0, 1)")
NON_EMPTY = Rule(lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string")


@dataclass(frozen=True)
class DataConfig:
    """Which corpus, and where it lives."""

    corpus: str = "synthetic"  # synthetic | ptb | text8 | enwik8 | tinyshakespeare | file:PATH
    data_dir: str = ""  # local copies of ptb/text8/enwik8 (empty: the cache)
    cache_dir: str = ""  # where downloads go (empty: ~/.cache/hmrnn)
    download: bool = False  # fetch missing corpora from their public origins
    fractions: tuple[float, ...] = (0.9, 0.05, 0.05)  # train/valid/test of a plain text file
    synthetic_chars: int = 300_000  # training characters of the synthetic corpus
    spaces: bool = True  # synthetic corpus: False leaves the spaces out
    agreement: bool = True  # synthetic corpus: False: verbs do not agree with their subjects
    seed: int = 0  # synthetic corpus seed


DATA_RULES: dict[str, Rule] = {
    "corpus": NON_EMPTY,
    "data_dir": ANY,
    "cache_dir": ANY,
    "download": ANY,
    "fractions": Rule(lambda v: _finite(v) and 0 <= v <= 1, "in [0, 1]"),
    "synthetic_chars": at_least(1),
    "spaces": ANY,
    "agreement": ANY,
    "seed": at_least(0),
}


@dataclass(frozen=True)
class ModelConfig:
    """The recurrent stack and the layers around it."""

    rnn: str = "hmlstm"  # hmlstm | lstm | cwrnn (layer_norm picks the LN LSTM / LN CW-RNN)
    num_layers: int = 3
    hidden_size: tuple[int, ...] = (128,)  # one size for all layers, or one per layer
    embedding_size: int = 64  # paper: 128
    output_size: int = 256  # the gated output embedding h^e; paper: 512 / 2048
    boundary: str = "step"  # step | sample | soft | gumbel (noise in training, step in eval)
    # where a boundary's straight-through gradient goes: chain (everywhere; the paper's) |
    # hold | local (the detectors' own weights only; no exploding chain through COPY)
    boundary_grad: str = "local"
    layer_norm: bool = True
    # initial LN gain of the boundary row z of each term (0: the terms' 0.01); a spread of
    # the detectors from the first step (docs/model.md decision 9; with boundary_grad hold
    # or local: under chain it reopens the exploding start)
    boundary_ln_gain: float = 0.0
    mixture_components: int = 20  # handwriting: Gaussians of the mixture density head


MODEL_RULES: dict[str, Rule] = {
    "rnn": one_of("hmlstm", "lstm", "cwrnn"),  # hmrnn.model.registry.RNN_KINDS
    "num_layers": at_least(1),
    "hidden_size": at_least(1),
    "embedding_size": at_least(1),
    "output_size": at_least(1),
    "boundary": one_of("step", "sample", "soft", "gumbel"),
    "boundary_grad": one_of("chain", "hold", "local"),
    "layer_norm": ANY,
    "boundary_ln_gain": at_least(0),
    "mixture_components": at_least(1),
}


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation procedure (the paper's section 4.1)."""

    batch_size: int = 32  # N parallel streams
    seq_len: int = 50  # T, truncated-BPTT segment length
    lr: float = 0.002
    clip: float = 1.0  # gradient-norm clipping
    lr_decay: float = 50.0  # divide the learning rate by this when valid NLL stops falling
    patience: int = 2  # evaluations without improvement before the learning rate drops
    max_lr_drops: int = 2  # early stop once the learning rate has dropped this often
    slope_rate: float = 1.0  # slope annealing a = min(max, 1 + rate * epoch); 0: off (paper: 0.04)
    slope_max: float = 5.0  # with boundary_grad chain, above 2 the gradient can explode
    max_steps: int = 1500  # 0: no limit
    max_epochs: float = 0.0  # 0: no limit
    max_minutes: float = 5.0  # wall-clock budget; 0: no limit
    eval_every: int = 200  # steps between evaluations on the validation split
    eval_batch_size: int = 64
    eval_chars: int = 0  # characters (handwriting: points) of each validation; 0: all
    log_every: int = 20  # steps between metric records
    max_nonfinite: int = 5  # consecutive non-finite steps that stop the run
    seed: int = 0
    adam_beta2: float = 0.999  # the authors' code: 0.99
    weight_decay: float = 0.0  # Adam's (L2); the authors' code: 5e-4
    # Boundary-rate control (docs/model.md decision 9; not the paper's, off in its configs):
    rate_control: str = "bias"  # none | bias: integral control of the bias | loss | prior
    boundary_rate: tuple[float, ...] = (0.2, 0.05)  # target rate per layer below the top
    rate_gain: tuple[float, ...] = (0.2, 0.05)  # bias step per unit of rate error (bias), or
    # the loss's weight (loss, prior): one for every layer or one per layer below the top
    # (loss: the H-Net ratio loss; prior: a binomial prior on each stream's boundary count)
    rate_error: str = "logit"  # the controller's error: logit (log-odds) | linear (target - rate)
    rate_warmup: int = 0  # bias control: steps over which the targets above layer 1 fall from
    # layer 1's to their own (linearly in log-odds); 0: each layer's own target from the start
    rate_bias_gradient: bool = True  # bias control: the optimiser also trains the boundary bias
    rate_calibrate: bool = False  # bias control: after the first step, set each boundary bias
    # so that the layer fires at its target on that step's batch (bisection)
    rate_recentre: int = 0  # bias control: after each of the first N steps, in place of the
    # controller, move each boundary bias so that its layer fires at about its target on that
    # step's batch (from its pre-activations, one pass per layer); 0: off
    surprisal_prior: tuple[float, ...] = (0.0,)  # weight of surprisal_prior_loss (where a
    # layer fires: where the next target got harder to predict): one for every layer
    # or one per layer below the top; 0: off
    separator_warmup: int = 0  # character models: for the first N steps layer 1's
    # boundaries are given, on each character after a word (after_word_boundaries), and its
    # detector is not read; then it decides (its detector learned from then on); 0: off
    boundary_cap: float = 0.0  # norm cap of each weight's boundary row (authors: 1.9365); 0: off
    boundary_gain_cap: float = 0.0  # cap of the boundary entry of each term's LN gain; 0: off
    boundary_release: int = 0  # steps before the optimiser reaches the detectors above
    # layer 1 (the controller holds their rates meanwhile); 0: from the start
    release_silent: bool = False  # with boundary_release: those layers do not fire before
    # the release, and at it each bias is set by bisection so that it fires at its target


TRAIN_RULES: dict[str, Rule] = {
    "batch_size": at_least(1),
    "seq_len": at_least(0),  # 0: whole sequences (handwriting); a character model needs >= 1
    "lr": positive(10.0),
    "clip": at_least(0),  # 0: no clipping
    "lr_decay": at_least(1),
    "patience": at_least(1),
    "max_lr_drops": at_least(0),
    "slope_rate": at_least(0),
    "slope_max": at_least(1),
    "max_steps": at_least(0),
    "max_epochs": at_least(0),
    "max_minutes": at_least(0),
    "eval_every": at_least(1),
    "eval_batch_size": at_least(1),
    "eval_chars": at_least(0),  # 0: the whole split
    "log_every": at_least(1),
    "max_nonfinite": at_least(1),
    "seed": at_least(0),
    "adam_beta2": OPEN_UNIT,
    "weight_decay": at_least(0),
    "boundary_rate": OPEN_UNIT,
    "rate_control": one_of("none", "bias", "loss", "prior"),
    "rate_gain": positive(),
    "rate_error": one_of("linear", "logit"),
    "rate_warmup": at_least(0),
    "rate_bias_gradient": ANY,
    "rate_calibrate": ANY,
    "rate_recentre": at_least(0),
    "surprisal_prior": at_least(0),
    "separator_warmup": at_least(0),
    "boundary_cap": at_least(0),
    "boundary_gain_cap": at_least(0),
    "boundary_release": at_least(0),
    "release_silent": ANY,
}


@dataclass(frozen=True)
class RunConfig:
    """Where the run writes, and on what it runs."""

    out_dir: str = "runs/default"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch CPU threads; 0: torch's default
    progress: bool = True  # bars on a terminal's stderr; without: plain progress lines
    tensorboard: bool = True  # also log to TensorBoard (the extra hmrnn[tensorboard])
    backend: str = ""  # DDP backend; empty: nccl on CUDA, gloo on CPU
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast on CUDA)
    # CUDA only: replay CUDA graphs of the recurrent stack's calls, in training and in the
    # run's evaluations (one process, fp32; hmrnn.model.graphed), and let float32 matrix
    # products use TF32 tensor cores (as cuDNN's LSTM does by default in PyTorch)
    cuda_graph: bool = True
    tf32: bool = True


RUN_RULES: dict[str, Rule] = {
    "out_dir": NON_EMPTY,
    "device": matches(r"auto|cpu|cuda(:\d+)?", "auto, cpu, cuda or cuda:N"),
    "threads": at_least(0),
    "progress": ANY,
    "tensorboard": ANY,
    "backend": one_of("", "nccl", "gloo", "mpi"),
    "precision": one_of("fp32", "bf16", "fp16"),
    "cuda_graph": ANY,
    "tf32": ANY,
}

RULES: dict[str, dict[str, Rule]] = {
    "data": DATA_RULES, "model": MODEL_RULES, "train": TRAIN_RULES, "run": RUN_RULES,
}


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {
            f.name: {k: list(v) if isinstance(v, tuple) else v
                     for k, v in dataclasses.asdict(getattr(self, f.name)).items()}
            for f in fields(self)
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """The config :meth:`to_dict` wrote (a checkpoint's, a run folder's); a field it
        lacks takes :data:`SAVED_BEFORE` where listed (the computation it was saved with),
        else today's default."""
        values = {f"{s}.{k}": v for s, sec in data.items() for k, v in sec.items()}
        return apply_overrides(cls(), {**SAVED_BEFORE, **values})

    def to_toml(self) -> str:
        lines: list[str] = []
        for section, values in self.to_dict().items():
            lines.append(f"[{section}]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in values.items())
            lines.append("")
        return "\n".join(lines)


SAVED_BEFORE: dict[str, Any] = {"model.boundary_grad": "chain"}
"""What a saved config that predates a field meant by it, where today's default differs:
the boundary gradient went everywhere (``"chain"``) before ``model.boundary_grad``."""


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)


def _field_types(section: type) -> dict[str, Any]:
    hints = typing.get_type_hints(section)
    return {f.name: hints[f.name] for f in fields(section)}


def valid_keys() -> list[str]:
    return [
        f"{s.name}.{k}"
        for s in fields(Config)
        for k in _field_types(typing.get_type_hints(Config)[s.name])
    ]


def _coerce(key: str, value: Any, kind: Any) -> Any:
    """Coerce a TOML or command-line value to the field's type, or raise ConfigError."""
    origin = typing.get_origin(kind)
    if origin is tuple and isinstance(value, str):
        value = _list_items(key, value)
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(str(value).replace("_", "")) if isinstance(value, str) else int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind is str:
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise ValueError
            return str(value)
        if origin is tuple:
            item = typing.get_args(kind)[0]
            items = [value] if isinstance(value, int | float) else value
            return tuple(_coerce(key, x.strip() if isinstance(x, str) else x, item)
                         for x in items)
    except (TypeError, ValueError):
        pass
    else:
        raise ConfigError(f"{key}: unsupported field type {kind}")
    name = (
        f"a list of {typing.get_args(kind)[0].__name__}" if origin is tuple
        else kind.__name__ if isinstance(kind, type) else str(kind)
    )
    raise ConfigError(f"{key} expects {name}, got {value!r}")


def _list_items(key: str, text: str) -> list[Any]:
    """The items of a command-line list: ``64,64,32`` or the TOML literal ``[64, 64, 32]``."""
    if not text.strip().startswith("["):
        return text.split(",")
    try:
        items = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        items = None
    if not isinstance(items, list):
        raise ConfigError(f"{key}: cannot read {text!r} as a list; write its items separated "
                          "by commas (1,2,3) or as a TOML list ([1, 2, 3])")
    return items


def apply_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    """Return ``config`` with dotted ``section.field`` overrides applied (values coerced)."""
    sections = typing.get_type_hints(Config)
    changes: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        types_ = _field_types(sections[section]) if section in sections else {}
        if name not in types_:
            close = difflib.get_close_matches(key, valid_keys(), n=1, cutoff=0.5)
            if not close:
                close = difflib.get_close_matches(
                    name, [k.split(".")[1] for k in valid_keys()], n=1, cutoff=0.6
                )
                close = [k for k in valid_keys() if close and k.endswith("." + close[0])]
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(f"unknown config key {key!r}{hint}")
        changes.setdefault(section, {})[name] = _coerce(key, value, types_[name])
    return dataclasses.replace(
        config,
        **{s: dataclasses.replace(getattr(config, s), **c) for s, c in changes.items()},
    )


def validate_config(config: Config) -> Config:
    """Check every field against its section's rule (and the few that depend on each
    other); return ``config``, or raise ConfigError naming the field and its allowed range."""
    for section in fields(config):
        values = getattr(config, section.name)
        for name, rule in RULES.get(section.name, {}).items():
            value = getattr(values, name)
            items = value if isinstance(value, tuple) else (value,)
            for item in items:
                if not rule.test(item):
                    where = f"{section.name}.{name}"
                    if isinstance(value, tuple):
                        raise ConfigError(f"every item of {where} must be {rule.allowed}, "
                                          f"got {item!r} in {list(value)!r}")
                    raise ConfigError(f"{where} must be {rule.allowed}, got {value!r}")
    model = config.model
    if len(model.hidden_size) not in (1, model.num_layers):
        raise ConfigError(
            f"model.hidden_size must give one size or one per layer (model.num_layers="
            f"{model.num_layers}), got {len(model.hidden_size)} sizes")
    if len(config.data.fractions) != 3 or not math.isclose(sum(config.data.fractions), 1.0,
                                                           abs_tol=1e-6):
        raise ConfigError(f"data.fractions must be three fractions (train, valid, test) "
                          f"summing to 1, got {list(config.data.fractions)}")
    train = config.train
    gains = len(train.rate_gain)
    if gains not in (1, len(train.boundary_rate)) and train.rate_control != "none":
        raise ConfigError(f"train.rate_gain must give one value or one per target of "
                          f"train.boundary_rate ({len(train.boundary_rate)}), got {gains} values")
    if any(train.surprisal_prior):
        if model.rnn != "hmlstm":
            raise ConfigError(f"train.surprisal_prior weights the HM-LSTM's boundary "
                              f"detectors: it needs model.rnn='hmlstm', got {model.rnn!r}")
        if len(train.surprisal_prior) not in (1, model.num_layers - 1):
            raise ConfigError(f"train.surprisal_prior must give one weight or one per layer "
                              f"below the top ({model.num_layers - 1}), got "
                              f"{len(train.surprisal_prior)} weights")
    if train.separator_warmup and (model.rnn != "hmlstm" or model.num_layers < 2):
        raise ConfigError(f"train.separator_warmup gives the boundaries of an HM-LSTM's "
                          f"layer 1: it needs model.rnn='hmlstm' and model.num_layers >= 2, "
                          f"got {model.rnn!r} with {model.num_layers} layer(s)")
    if model.boundary_ln_gain and (model.rnn != "hmlstm" or not model.layer_norm):
        raise ConfigError("model.boundary_ln_gain sets a layer-norm gain of the HM-LSTM's "
                          "boundary detectors: it needs model.rnn='hmlstm' and "
                          "model.layer_norm=true")
    for name in ("rate_calibrate", "rate_warmup", "rate_recentre"):  # the controller's
        if getattr(train, name) and train.rate_control != "bias":
            raise ConfigError(f"train.{name} needs train.rate_control='bias' (the controller), "
                              f"got {train.rate_control!r}")
    if train.release_silent and not train.boundary_release:
        raise ConfigError("train.release_silent holds the layers above the first silent until "
                          "train.boundary_release: it needs train.boundary_release > 0")
    return config


# Fields a resumed run cannot change: they fix the model's shape or the data position of a
# step (whole sections by "section.*"). Any other override takes effect on --resume.
FIXED_ON_RESUME = (
    "model.*", "data.corpus", "data.fractions", "data.synthetic_chars", "data.spaces",
    "data.agreement", "data.seed", "train.batch_size", "train.seq_len", "train.seed",
)


def _corpus_kind(corpus: str) -> str:
    """A corpus name (``ptb``, ``synthetic``...), or ``"a file"`` for a path to one."""
    if corpus.startswith("file:") or "/" in corpus or "\\" in corpus or "." in corpus:
        return "a file"
    return corpus


# How a fixed field is compared on resume, where not by ==: a text corpus may move (its
# vocabulary is checked against the checkpoint's when it is read).
RESUME_SAME: dict[str, Callable[[Any, Any], bool]] = {
    "data.corpus": lambda old, new: _corpus_kind(old) == _corpus_kind(new),
}


def _show(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else repr(value)


def check_resume_overrides(saved: Config, resumed: Config, keys: typing.Iterable[str]) -> None:
    """Refuse (ConfigError, one line) an override of ``keys`` that changes a field fixed on
    resume: its value in ``resumed`` differs from the checkpoint's config ``saved``."""
    for key in keys:
        section, _, name = key.partition(".")
        if key not in FIXED_ON_RESUME and f"{section}.*" not in FIXED_ON_RESUME:
            continue
        old = getattr(getattr(saved, section), name)
        new = getattr(getattr(resumed, section), name)
        if not RESUME_SAME.get(key, operator.eq)(old, new):
            raise ConfigError(
                f"--resume: {key} cannot change on resume (the checkpoint has {_show(old)}, "
                f"asked {_show(new)}); start a new run in another run.out_dir instead")


def config_path(name_or_path: str) -> Path:
    """A config file by path, or by name from the packaged ``configs/`` folder."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    packaged = CONFIG_DIR / f"{name_or_path}.toml"
    if not packaged.is_file():
        raise ConfigError(
            f"no config named {name_or_path!r}; known: {', '.join(config_names())}")
    return packaged


def config_names() -> list[str]:
    """The names of the packaged configs (``hmrnn/configs/*.toml``), sorted; no file is read."""
    return sorted(path.stem for path in CONFIG_DIR.glob("*.toml"))


def config_corpus(name_or_path: str) -> str:
    """The corpus a config file trains on: its ``data.corpus``, after its base file's, read
    without building a Config.

    Raises:
        ConfigError: the file, or one it is based on, is missing or not valid TOML.
    """
    return str(_file_values(name_or_path).get("data.corpus", DataConfig.corpus))


def load_config(name_or_path: str | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the TOML file (if any), then the overrides."""
    config = apply_overrides(Config(), _file_values(name_or_path)) if name_or_path else Config()
    return apply_overrides(config, overrides or {})


def _file_values(name_or_path: str, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The dotted values of a config file, after those of its ``base = "..."`` file."""
    path = config_path(name_or_path)
    if path in seen:
        raise ConfigError(f"config file {path} includes itself through base = ...")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    base = data.pop("base", None)
    flat: dict[str, Any] = {}
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: base must be the name or path of another config")
        flat.update(_file_values(base, (*seen, path)))
    for section, values in data.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: top-level key {section!r} must be a [section]")
        flat.update({f"{section}.{k}": v for k, v in values.items()})
    return flat


def parse_overrides(args: list[str]) -> dict[str, str]:
    """``["train.lr=0.1", "--model.rnn=lstm"]`` -> ``{"train.lr": "0.1", "model.rnn": "lstm"}``."""
    out: dict[str, str] = {}
    for arg in args:
        key, sep, value = arg.removeprefix("--").partition("=")
        if not sep or "." not in key:
            raise ConfigError(
                f"cannot read {arg!r}: overrides look like section.field=value, e.g. train.lr=0.001"
            )
        out[key] = value
    return out


__all__ = [
    "Config", "ConfigError", "DataConfig", "ModelConfig", "RunConfig", "TrainConfig",
    "FIXED_ON_RESUME", "RULES", "Rule", "apply_overrides", "check_resume_overrides",
    "config_corpus", "config_names", "load_config", "parse_overrides", "valid_keys",
    "validate_config",
]

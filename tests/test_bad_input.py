"""Every bad input of the issue's list ends in one line on stderr and exit status 2 (never a
traceback, never silently accepted); the config is validated as a whole, up front."""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path

import pytest
import torch
from helpers import error_line

from hmrnn.cli import main
from hmrnn.training.config import RULES, Config, ConfigError, load_config, validate_config
from hmrnn.training.trainer import clip_gradients

TINY = ["model.hidden_size=8,7,6", "model.embedding_size=6", "model.output_size=12",
        "train.batch_size=4", "train.seq_len=10", "train.eval_batch_size=8",
        "run.progress=false", "run.tensorboard=false", "train.max_minutes=0"]


def _corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("the cat sat on a mat and the dog ran\n" * 60)
    return path


def read_only_dir(tmp_path: Path) -> Path:
    """A folder nothing can be created in: mode 0555, or (as root, whom modes do not stop)
    a path under /sys, where even root cannot make folders."""
    if os.geteuid() == 0:
        return Path("/sys/hmrnn-test-read-only")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


@pytest.mark.parametrize(
    "setting",
    ["run.device=bogus", "train.eval_every=0", "train.log_every=0", "run.threads=-1",
     "train.lr_decay=0", "train.lr_decay=-2", "train.lr=1e39", "train.lr=inf", "train.lr=nan",
     "train.clip=-1", "train.max_steps=-1", "train.max_minutes=-1", "train.max_epochs=-1",
     "train.patience=-1", "train.slope_rate=-1", "train.max_nonfinite=0",
     "model.hidden_size=8,0,6", "model.num_layers=0", "train.batch_size=0"],
)
def test_out_of_range_settings_are_refused_up_front(tmp_path: Path, capsys, setting: str) -> None:
    out = tmp_path / "r"
    code = main(["train", f"data.corpus={_corpus(tmp_path)}", f"run.out_dir={out}", *TINY,
                 setting])
    assert code == 2
    line = error_line(capsys)
    assert setting.split("=")[0] in line and "must be" in line
    assert not out.exists()  # refused before anything was written


def test_every_field_has_a_rule_and_the_packaged_configs_pass() -> None:
    for name, section in typing.get_type_hints(Config).items():
        assert {f.name for f in dataclasses.fields(section)} == set(RULES[name]), name
    for path in (Path(__file__).resolve().parents[1] / "hmrnn" / "configs").glob("*.toml"):
        validate_config(load_config(path.stem))
    with pytest.raises(ConfigError, match="model.hidden_size must give one size or one per"):
        validate_config(load_config(None, {"model.hidden_size": "4,4"}))
    with pytest.raises(ConfigError, match=r"train.rate_gain must give one value or one per "
                                          r"target of train.boundary_rate \(2\), got 3 values"):
        validate_config(load_config(None, {"train.rate_gain": "0.2,0.05,0.05"}))
    with pytest.raises(ConfigError, match=r"train.rate_gain must give one value or one per "):
        validate_config(load_config(None, {"train.rate_control": "loss",
                                           "train.rate_gain": "0.2,0.05,1"}))
    validate_config(load_config(None, {"train.rate_control": "none",  # unused
                                       "train.rate_gain": "0.2,0.05,1"}))
    validate_config(load_config(None, {"train.rate_gain": "0.2,0.05"}))
    with pytest.raises(ConfigError, match=r"train.rate_calibrate needs train.rate_control='bias'"):
        validate_config(load_config(None, {"train.rate_control": "none",
                                           "train.rate_calibrate": "true"}))
    with pytest.raises(ConfigError, match=r"train.rate_warmup needs train.rate_control='bias'"):
        validate_config(load_config(None, {"train.rate_control": "prior",
                                           "train.rate_warmup": "100"}))
    with pytest.raises(ConfigError, match=r"train.rate_recentre needs train.rate_control='bias'"):
        validate_config(load_config(None, {"train.rate_control": "loss",
                                           "train.rate_recentre": "10"}))
    with pytest.raises(ConfigError, match=r"train.release_silent .* needs "
                                          r"train.boundary_release > 0"):
        validate_config(load_config(None, {"train.release_silent": "true"}))


def test_clip_zero_means_off() -> None:
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([30.0, 40.0, 0.0])
    assert float(clip_gradients([p], 0.0)) == pytest.approx(50.0)
    assert torch.equal(p.grad, torch.tensor([30.0, 40.0, 0.0]))  # measured, not scaled
    clip_gradients([p], 1.0)
    assert float(p.grad.norm()) == pytest.approx(1.0, rel=1e-4)


def test_out_dir_that_is_a_file_or_read_only(tmp_path: Path, capsys) -> None:
    corpus = _corpus(tmp_path)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert main(["train", f"data.corpus={corpus}", f"run.out_dir={a_file}", *TINY]) == 2
    assert str(a_file) in error_line(capsys)
    locked = read_only_dir(tmp_path) / "run"
    assert main(["train", f"data.corpus={corpus}", f"run.out_dir={locked}", *TINY]) == 2
    assert str(locked.parent) in error_line(capsys)


@pytest.mark.parametrize("args", [["--temperature", "nan"], ["--temperature", "-1"],
                                  ["--length", "-5"], ["--num-samples", "0"]])
def test_bad_sample_flags(tmp_path: Path, capsys, args: list[str]) -> None:
    assert main(["sample", str(tmp_path / "none.pt"), *args]) == 2
    line = error_line(capsys)
    assert args[0] in line


def test_inspect_and_handwriting_outputs_that_cannot_be_written(tmp_path: Path, capsys) -> None:
    from hmrnn.tasks.charlm.build import build_charlm
    from hmrnn.training.checkpoint import save_checkpoint

    config = load_config(None, {"model.hidden_size": "6", "model.embedding_size": "4",
                                "model.output_size": "5"})
    model = build_charlm(config.model, 4)
    checkpoint = save_checkpoint(tmp_path / "m.pt", {
        "kind": "charlm", "config": config.to_dict(), "model": model.state_dict(),
        "vocab": list("ab \n")})
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for out in (a_file, read_only_dir(tmp_path) / "inspect"):
        assert main(["inspect", str(checkpoint), "--text", "ab ab", "--out", str(out)]) == 2
        line = error_line(capsys)
        assert str(out) in line or str(out.parent) in line
    out = read_only_dir(tmp_path) / "sample.png"
    assert main(["handwriting", "sample", str(tmp_path / "none.pt"), "--out", str(out)]) == 2
    assert str(out.parent) in error_line(capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_bench_on_cuda_without_cuda(capsys) -> None:
    assert main(["bench", "--device", "cuda"]) == 2
    assert "CUDA is not available" in error_line(capsys)

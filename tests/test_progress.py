"""Watching long work: progress bars with a total and an ETA (training, under a time budget
too; evaluation; inspect; bench), lines never glued onto a bar, plain progress lines when
no bar is drawn, and ``train.eval_chars``, the cap on each validation."""

from __future__ import annotations

import dataclasses
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import RESUME_SETTINGS, Terminal, tiny_trainer, write_words

from hmrnn import progress
from hmrnn.analysis.report import inspect_sequence
from hmrnn.cli.bench import main as bench_main
from hmrnn.progress import around_bars, progress_bar
from hmrnn.tasks.charlm.task import evaluate_lm
from hmrnn.training.config import ConfigError, load_config, validate_config
from hmrnn.training.trainer import Trainer

# a drawn bar with a total and an ETA: "12/40 [00:03<00:07"
WITH_ETA = re.compile(r"\d+/\d+ \[\d\d:\d\d<\d\d:\d\d")


def as_terminal(monkeypatch: pytest.MonkeyPatch) -> Terminal:
    """stderr as a terminal, so that the bars draw (into the buffer returned). Called in the
    test itself: pytest sets its own stderr again between a fixture and the test."""
    stream = Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    return stream


def draw_every_update(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bars redraw at every update (not at most once per tqdm's ``mininterval``), so that
    their last count is in the buffer before ``leave=False`` clears them."""
    real = progress.tqdm
    monkeypatch.setattr(progress, "tqdm", lambda **options: real(
        **{**options, "mininterval": 0, "miniters": 1}))


def _trainer(tmp_path: Path, echo=lambda _m: None, **settings: str) -> Trainer:
    text = write_words(tmp_path / "text", words=300)
    return tiny_trainer(text, RESUME_SETTINGS | {"run.out_dir": str(tmp_path / "run"),
                                                 **settings}, (0.8, 0.1, 0.1), echo=echo)


def test_a_bar_draws_only_on_a_terminal_and_when_enabled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    terminal = as_terminal(monkeypatch)
    for enabled in (True, False):
        with progress_bar(total=4, desc=f"work {enabled}", enabled=enabled,
                          mininterval=0) as bar:
            assert bool(bar.disable) is not enabled
            bar.update(4)
    assert "work True: 100%" in terminal.getvalue() and WITH_ETA.search(terminal.getvalue())
    assert "work False" not in terminal.getvalue()
    monkeypatch.setattr(sys, "stderr", not_a_terminal := Terminal())
    monkeypatch.setattr(not_a_terminal, "isatty", lambda: False)
    with progress_bar(total=4, desc="work") as bar:
        assert bar.disable
        bar.update(4)
    assert not_a_terminal.getvalue() == ""  # logs and pipes get no bars


def test_lines_are_written_around_a_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = as_terminal(monkeypatch)
    say = around_bars(lambda message: terminal.write(message + "\n"))
    with progress_bar(total=4, desc="work", mininterval=0) as bar:
        bar.update(2)
        say("step 2 valid: loss=1")
        bar.update(2)
    out = terminal.getvalue()
    assert re.search(r"[^\r\n]step 2 valid", out) is None  # cleared first, never glued
    assert out.count("step 2 valid") == 1 and out.index("step 2 valid") < out.index("4/4")


def test_a_time_budget_gives_the_bar_a_total_and_an_eta(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = as_terminal(monkeypatch)
    # the planned end: the steps the time left allows at the mean time per step so far
    planned = _trainer(tmp_path, **{"train.max_minutes": "1", "train.max_steps": "0"})
    assert planned._planned_steps() is None  # no step timed yet
    planned.state.step, planned.state.elapsed = 10, 5.0
    assert planned._planned_steps() == 10 + 110  # (60 s - 5 s) at 0.5 s a step
    planned.train_cfg = dataclasses.replace(planned.train_cfg, max_steps=20)
    assert planned._planned_steps() == 20  # the first budget to run out
    trainer = _trainer(tmp_path, echo=lambda m: terminal.write(m + "\n"),
                       **{"run.progress": "true", "train.max_minutes": "0.02",
                          "train.max_steps": "0", "train.eval_every": "2",
                          "train.patience": "1000000"})  # no early stop on a fast machine
    ticks = iter(range(10**9))  # a step clock that does not depend on the machine's load
    with monkeypatch.context() as clock:
        clock.setattr(time, "perf_counter", lambda: 0.05 * next(ticks))
        result = trainer.fit()
    # 1.2 s of training at 0.05 s a step (as the step clock reads it), give or take rounding
    assert result.stopped_by == "max_minutes" and 20 <= result.step <= 25
    out = terminal.getvalue()
    last = [line for line in out.split("\r") if line.startswith("train:")][-1]
    assert f"{result.step}/{result.step} [" in last and WITH_ETA.search(last)
    assert out.index("step 2 valid:") < out.rindex("train:")  # said while the bar was up
    assert re.search(r"[^\r\n](step \d+ valid)", out) is None  # never glued onto the bar


def test_without_a_bar_training_prints_plain_progress_lines(tmp_path: Path) -> None:
    said: list[str] = []
    trainer = _trainer(tmp_path, echo=said.append, **{"train.max_steps": "3",
                                                      "train.log_every": "1",
                                                      "train.eval_every": "3"})
    trainer.fit()
    first = said[0]
    assert re.fullmatch(r"step 1/3 train: loss=\S+ .* \(\S+ steps/s, \d\d:\d\d elapsed, "
                        r"\d\d:\d\d left\)", first), first
    assert said.index(first) < said.index(next(m for m in said if m.startswith("step 3 valid")))


def test_evaluation_shows_a_bar_of_the_characters(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = as_terminal(monkeypatch)
    draw_every_update(monkeypatch)
    config = load_config(None, {"model.hidden_size": "6", "model.embedding_size": "4",
                                "model.output_size": "5"})
    from hmrnn.tasks.charlm.build import build_charlm

    torch.manual_seed(0)
    model = build_charlm(config.model, 5)
    ids = np.random.default_rng(0).integers(0, 5, size=301)
    quiet = evaluate_lm(model, ids, batch_size=3, seq_len=7)
    assert terminal.getvalue() == ""
    shown = evaluate_lm(model, ids, batch_size=3, seq_len=7, progress=True)
    assert shown.bpc == quiet.bpc
    assert re.search(r"evaluate: .*\b300/300 \[", terminal.getvalue())  # a total, reached


def test_eval_chars_caps_each_validation(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"train.eval_chars must be >= 0, got -1"):
        validate_config(load_config(None, {"train.eval_chars": "-1"}))
    whole = _trainer(tmp_path)
    capped = _trainer(tmp_path, **{"train.eval_chars": "40"})
    ids = capped.task.corpus.splits["valid"]
    assert len(ids) > 41
    torch.manual_seed(1)  # the same sampled boundaries (model.boundary=sample)
    expected = evaluate_lm(capped.model, ids[:41], batch_size=5, seq_len=8)
    torch.manual_seed(1)
    metrics = capped.task.evaluate("valid")
    assert metrics["bpc"] == pytest.approx(expected.bpc) and expected.chars == 40
    assert metrics["bpc"] != pytest.approx(whole.task.evaluate("valid")["bpc"])
    assert len(metrics["z"]) == 2 and 0 <= metrics["f1_word"] <= 1


def test_inspect_and_bench_show_their_bars(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = as_terminal(monkeypatch)
    draw_every_update(monkeypatch)
    steps = 30
    boundary = np.zeros((steps, 3), dtype=int)
    boundary[::4, 0] = boundary[::9, 1] = 1
    norms = np.ones((steps, 3))
    inspect_sequence("ab cd " * 5, boundary, norms, tmp_path / "inspect", progress=True)
    assert re.search(r"inspect: .*\b3/3 \[", terminal.getvalue())
    assert bench_main(["--suite", "inference", "--layers", "2", "--embedding", "4", "--vocab",
                       "7", "--seq-len", "5", "--repeats", "2", "--warmup", "1",
                       "--eval-hidden", "6", "--eval-chars", "120", "--eval-batch", "3",
                       "--gen-chars", "4", "--threads", "1"]) == 0
    # two measurements (evaluation, generation) of 1 warm-up and 2 timed rounds each
    assert re.search(r"bench: .*\b6/6 \[", terminal.getvalue())

"""The run folder: config.toml, metrics.jsonl's clock, events and test record (and the
plot that reads them), resume, and TensorBoard's tags, replayed steps and absence."""

from __future__ import annotations

import json
import math
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomllib
from helpers import RESUME_SETTINGS, tiny_trainer, write_words

from hmrnn.analysis.curves import plot_curves, read_metrics
from hmrnn.training.checkpoint import load_checkpoint
from hmrnn.training.config import Config
from hmrnn.training.metrics_log import MetricsWriter
from hmrnn.training.trainer import TENSORBOARD_MISSING, Trainer


def _trainer(tmp_path: Path, echo: Callable[[str], None] = lambda _m: None,
             **settings: str) -> Trainer:
    text = write_words(tmp_path / "text", words=300)
    return tiny_trainer(text, RESUME_SETTINGS | {"run.out_dir": str(tmp_path / "run"),
                                                 "train.log_every": "1", **settings},
                        (0.8, 0.1, 0.1), echo=echo)


def _records(trainer: Trainer) -> list[dict[str, Any]]:
    lines = (trainer.out_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_a_run_writes_its_config_clock_events_and_test_result(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, **{"train.max_steps": "6"})
    start = time.time()
    trainer.fit()
    written = tomllib.loads((trainer.out_dir / "config.toml").read_text())
    assert Config.from_dict(written) == trainer.config
    trainer.record("test", {"loss": 1.5, "bpc": 2.2, "z": [0.3, 0.1]})  # after fit
    records = _records(trainer)
    # to the ms: a time is rounded to the nearest ms, so it may stand up to 0.5 ms after now
    assert all(start - 1e-3 <= r["time"] <= time.time() + 1e-3 for r in records)
    walls = [r["wall"] for r in records]
    assert walls == sorted(walls) and walls[0] >= 0
    assert records[-1] == {**records[-1], "kind": "test", "step": 6, "bpc": 2.2}
    stop = [r for r in records if r.get("event") == "stop"]
    assert [(r["step"], r["reason"]) for r in stop] == [(6, "max_steps")]
    assert {"train", "valid", "test", "event"} == {r["kind"] for r in records}
    # the plot reads the run, events and all
    assert len(read_metrics(trainer.out_dir)) == len(records)
    assert plot_curves(trainer.out_dir, tmp_path / "curves", formats="png")[0].stat().st_size


def test_learning_rate_drops_warnings_and_skipped_steps_are_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = _trainer(tmp_path, **{"train.max_steps": "14", "train.max_lr_drops": "5"})
    # validation that only gets worse: the learning rate drops at every scheduled one after
    # the first (train.patience=1, every 4 steps), at steps 8 and 12
    monkeypatch.setattr(trainer.task, "evaluate", lambda split: {"loss": trainer.state.step})
    monkeypatch.setattr(trainer.task, "warnings", lambda metrics: ["layer 1 has collapsed"])
    real = trainer.task.train_loss

    def flaky(model, step):
        loss, stats = real(model, step)
        return (loss * math.nan if step == 2 else loss), stats

    monkeypatch.setattr(trainer.task, "train_loss", flaky)
    trainer.fit()
    events = [r for r in _records(trainer) if r["kind"] == "event"]
    drops = [r for r in events if r["event"] == "lr_drop"]
    assert [r["step"] for r in drops] == [8, 12] and trainer.state.lr_drops == 2
    assert drops[-1]["lr"] == pytest.approx(trainer.lr) == 0.05 / 50**2
    assert "learning rate divided by 50" in drops[0]["message"]
    valid_steps = [r["step"] for r in _records(trainer) if r["kind"] == "valid"]
    warned = [r for r in events if r["event"] == "warning"]
    assert [r["step"] for r in warned] == valid_steps
    assert warned[0]["message"] == "warning: layer 1 has collapsed"
    skipped = [r for r in events if r["event"] == "nonfinite_step"]
    assert [r["step"] for r in skipped] == [3] and "step skipped" in skipped[0]["message"]


def test_resume_carries_the_clock_and_rewrites_the_config(tmp_path: Path) -> None:
    first = _trainer(tmp_path, **{"train.max_steps": "4"})
    first.fit()
    wall = load_checkpoint(first.last_path)["trainer"]["wall"]
    assert wall > 0
    resumed = _trainer(tmp_path, **{"train.max_steps": "6", "train.lr_decay": "10"})
    resumed.restore(load_checkpoint(first.last_path))
    assert resumed.save(tmp_path / "copy.pt")  # the clock carried before fit() too
    assert load_checkpoint(tmp_path / "copy.pt")["trainer"]["wall"] >= wall
    resumed.fit()
    written = Config.from_dict(tomllib.loads((resumed.out_dir / "config.toml").read_text()))
    assert written == resumed.config and written.train.max_steps == 6
    records = _records(resumed)
    assert [r["step"] for r in records if r.get("event") == "resume"] == [4]
    after = [r["wall"] for r in records if r["step"] > 4]
    assert after and min(after) >= wall
    assert load_checkpoint(resumed.last_path)["trainer"]["wall"] > wall


class _SummaryWriter:
    """Stands in for torch.utils.tensorboard.SummaryWriter: keeps what it is given."""

    made: list[_SummaryWriter] = []

    def __init__(self, log_dir: str, purge_step: int | None = None) -> None:
        self.log_dir, self.purge_step = log_dir, purge_step
        self.scalars: list[tuple[str, float, int]] = []
        self.texts: list[tuple[str, str, int]] = []
        _SummaryWriter.made.append(self)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))

    def add_text(self, tag: str, text: str, step: int) -> None:
        self.texts.append((tag, text, step))

    def close(self) -> None:
        pass


def test_tensorboard_tags_and_replayed_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = _SummaryWriter  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    with MetricsWriter(tmp_path, keep_until=4) as writer:  # a run resumed at step 4
        assert writer.tensorboard
        writer.write("train", 5, {"loss": 1.0, "z": [0.2, 0.1], "chars/s": 900.0,
                                  "slope": math.nan, "note": "x"}, wall=1.0)
        writer.event("lr_drop", 5, "learning rate divided", wall=1.0, lr=0.1)
    tb = _SummaryWriter.made[-1]
    assert tb.purge_step == 5  # the steps after the checkpoint are written again
    assert tb.scalars == [("train/loss", 1.0, 5), ("train/boundary_rate/layer1", 0.2, 5),
                          ("train/boundary_rate/layer2", 0.1, 5), ("train/chars_per_s", 900.0, 5)]
    assert tb.texts == [("event/lr_drop", "learning rate divided", 5)]
    with MetricsWriter(tmp_path) as writer:  # appending: nothing to purge
        assert _SummaryWriter.made[-1].purge_step is None


@pytest.mark.parametrize("wanted", [True, False])
def test_missing_tensorboard_is_said_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wanted: bool,
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # not installed
    said: list[str] = []  # said as the trainer's other messages are, around the bars
    trainer = _trainer(tmp_path, said.append, **{"train.max_steps": "2",
                                                 "run.tensorboard": str(wanted).lower()})
    trainer.fit()
    assert said.count(TENSORBOARD_MISSING) == int(wanted)
    assert not (trainer.out_dir / "tensorboard").exists()

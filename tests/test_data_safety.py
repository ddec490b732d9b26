"""Checkpoints and run folders stay safe: a full disk, non-finite training, a second run in
the same folder, Ctrl-C in the final validation, killed writers, resumed overrides, modes."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from helpers import RESUME_SETTINGS, error_line, tiny_trainer, write_words

from hmrnn.cli import main
from hmrnn.training import checkpoint as checkpoint_module
from hmrnn.training.checkpoint import (
    load_checkpoint,
    nonfinite_tensors,
    remove_stale_temporaries,
    save_checkpoint,
)
from hmrnn.training.run_dir import CONFIG_NAME, RunLock
from hmrnn.training.trainer import TrainingError

TINY = ["model.hidden_size=8,7,6", "model.embedding_size=6", "model.output_size=12",
        "train.batch_size=4", "train.seq_len=10", "train.eval_batch_size=8",
        "run.progress=false", "run.tensorboard=false", "train.max_minutes=0",
        "train.log_every=1", "--no-report"]


def _temporaries(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.tmp"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_words(tmp_path_factory.mktemp("safety"), words=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus: Path) -> Path:
    out = tmp_path_factory.mktemp("safety-run") / "run"
    assert main(["train", f"data.corpus={corpus}", f"run.out_dir={out}", "train.max_steps=4",
                 "train.eval_every=2", *TINY]) == 0
    return out


def _copy(trained: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    return run


# -- the disk fills up ---------------------------------------------------------------


def test_full_disk_is_one_line_and_keeps_the_good_checkpoints(
    trained: Path, corpus: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    run = _copy(trained, tmp_path)
    before = {name: (run / name).read_bytes() for name in ("last.pt", "best.pt")}
    config = (run / CONFIG_NAME).read_bytes()
    resume = ["train", "--resume", f"data.corpus={corpus}", f"run.out_dir={run}",
              "train.max_steps=6", "train.eval_every=2", *TINY]

    def full(*_args: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    real = checkpoint_module.atomic_write

    @contextmanager
    def filling(path: Path) -> Iterator[object]:  # a checkpoint's bytes find no room
        with real(path):
            yield types.SimpleNamespace(write=full)

    with monkeypatch.context() as patch:  # full from the start: the first write fails
        patch.setattr(os, "fsync", full)
        assert main(resume) == 1
    line = error_line(capsys)
    assert "No space left on device" in line and str(run / CONFIG_NAME) in line
    assert (run / CONFIG_NAME).read_bytes() == config
    with monkeypatch.context() as patch:  # full once training has begun
        patch.setattr(checkpoint_module, "atomic_write", filling)
        assert main(resume) == 1
    line = error_line(capsys)
    assert "No space left on device" in line and str(run / "last.pt") in line
    assert {name: (run / name).read_bytes() for name in before} == before
    assert _temporaries(run) == []
    assert not (run / ".hmrnn.lock").exists()


# -- non-finite training never reaches a checkpoint -----------------------------------


def _trainer(tmp_path: Path, **settings: str):
    text = write_words(tmp_path, 300)
    return tiny_trainer(text, RESUME_SETTINGS | {"run.out_dir": str(tmp_path / "run"),
                                                 "model.boundary": "step",
                                                 "train.eval_every": "2"} | settings,
                        (0.8, 0.1, 0.1))


def _all_finite(path: Path) -> bool:
    saved = load_checkpoint(path)
    return not nonfinite_tensors({k: saved[k] for k in ("model", "optimizer", "task")})


def test_poisoned_weights_are_never_saved_and_the_message_names_a_good_one(
    tmp_path: Path, monkeypatch
) -> None:
    trainer = _trainer(tmp_path, **{"train.max_steps": "20", "train.max_nonfinite": "3"})
    real = trainer.task.on_step

    def poison(epoch: float) -> dict:
        if trainer.state.step == 3:  # as a huge learning rate would: inf weights
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("inf"))
        return real(epoch)

    monkeypatch.setattr(trainer.task, "on_step", poison)
    with pytest.raises(TrainingError, match=r"last good checkpoint is .*last.pt \(step 2\)"):
        trainer.fit()
    assert load_checkpoint(trainer.last_path)["trainer"]["step"] == 2
    assert _all_finite(trainer.last_path) and _all_finite(trainer.best_path)


def test_a_non_finite_validation_loss_writes_no_checkpoint(tmp_path: Path, monkeypatch) -> None:
    trainer = _trainer(tmp_path, **{"train.max_steps": "5"})
    real = trainer.task.evaluate

    def evaluate(split: str) -> dict:
        metrics = real(split)
        return metrics | {"loss": float("nan")} if trainer.state.step > 2 else metrics

    monkeypatch.setattr(trainer.task, "evaluate", evaluate)
    result = trainer.fit()  # evaluations at 2, 4 (NaN) and 5 (the final one, NaN)
    assert load_checkpoint(trainer.last_path)["trainer"]["step"] == 2
    assert result.last_checkpoint == trainer.last_path
    assert load_checkpoint(trainer.best_path)["trainer"]["step"] == 2
    assert _temporaries(trainer.out_dir) == []


# -- run folders ------------------------------------------------------------------------


def test_a_second_run_goes_to_a_new_folder_and_overwrite_replaces(
    trained: Path, corpus: Path, tmp_path: Path, capsys
) -> None:
    run = _copy(trained, tmp_path)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    args = ["train", f"data.corpus={corpus}", f"run.out_dir={run}", "train.max_steps=2",
            "train.eval_every=2", *TINY]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"this one writes to {run}-2" in out and f'out_dir = "{run}-2"' in out
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # untouched
    assert (Path(f"{run}-2") / "best.pt").is_file()
    assert main([*args, "--overwrite"]) == 0
    assert "earlier run" in capsys.readouterr().out
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in records) == 2  # the earlier run's records are gone
    assert not Path(f"{run}-3").exists()
    assert main([*args, "--overwrite", "--resume"]) == 2
    assert "give one of them" in error_line(capsys)


def test_a_live_run_locks_its_folder(trained: Path, corpus: Path, tmp_path: Path, capsys) -> None:
    run = _copy(trained, tmp_path)
    empty = tmp_path / "empty"
    for folder, extra in ((run, ["--resume"]), (empty, [])):
        with RunLock(folder):
            code = main(["train", f"data.corpus={corpus}", f"run.out_dir={folder}",
                         "train.max_steps=6", *TINY, *extra])
        assert code == 2
        assert "another hmrnn run is writing to this folder" in error_line(capsys)
    # a killed holder (kill -9) leaves no lock behind: the kernel drops it
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from hmrnn.training.run_dir import RunLock; "
         f"RunLock({str(empty)!r}); print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    with pytest.raises(OSError, match="another hmrnn run"):
        RunLock(empty)
    holder.kill()
    holder.wait()
    RunLock(empty).release()


# -- Ctrl-C during the final validation -------------------------------------------------


def test_ctrl_c_in_the_final_validation_leaves_last_pt(tmp_path: Path) -> None:
    corpus = write_words(tmp_path, words=60_000)  # a long validation split
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hmrnn", "train", f"data.corpus={corpus}", f"run.out_dir={out}",
         "data.fractions=0.05,0.9,0.05", "train.max_steps=2", "train.eval_every=1000",
         "train.eval_batch_size=2", *TINY],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.time() + 240
    while not (out / "last.pt").exists():  # written before the final validation
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "interrupted during the final validation" in stdout
    assert load_checkpoint(out / "last.pt")["trainer"]["step"] == 2


# -- killed writers, replayed steps, modes ------------------------------------------------


def test_stale_temporaries_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [tmp_path / f".last.pt.{dead.pid}.0123abcd.tmp", tmp_path / ".best.pt.x1y2z3w4.tmp",
             tmp_path / f".metrics.jsonl.{dead.pid}.89abcdef.tmp"]
    live = tmp_path / f".last.pt.{os.getppid()}.0123abcd.tmp"
    other = tmp_path / ".notes.tmp"
    for path in [*stale, live, other]:
        path.write_bytes(b"x" * 100)
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert live.exists() and other.exists()


def test_resume_cleans_temporaries_and_replayed_metrics(
    trained: Path, corpus: Path, tmp_path: Path
) -> None:
    run = _copy(trained, tmp_path)
    # as a run killed (kill -9) after step 4's checkpoint, at step 6, mid-write
    stale = run / ".last.pt.999999999.0123abcd.tmp"
    stale.write_bytes(b"x" * 1000)
    with (run / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"kind": "train", "step": 5}) + "\n" + '{"kind": "train", "st')
    assert main(["train", "--resume", f"data.corpus={corpus}", f"run.out_dir={run}",
                 "train.max_steps=6", "train.eval_every=2", *TINY]) == 0
    assert not stale.exists()
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    keys = [(r["kind"], r["step"]) for r in records if r["kind"] != "event"]
    assert len(keys) == len(set(keys)) and keys == sorted(keys, key=lambda k: k[1])
    assert ("train", 5) in keys and ("valid", 6) in keys
    assert [r["step"] for r in records if r.get("event") == "resume"] == [4]


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_checkpoints_honour_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        path = save_checkpoint(tmp_path / "c.pt", {"x": torch.zeros(2)})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode


# -- overrides on resume ------------------------------------------------------------------


@pytest.mark.parametrize(
    "setting",
    ["model.hidden_size=16,7,6", "model.num_layers=2", "train.seq_len=12",
     "train.batch_size=8", "data.synthetic_chars=1000", "data.corpus=synthetic"],
)
def test_resume_refuses_what_it_cannot_change(
    trained: Path, corpus: Path, tmp_path: Path, capsys, setting: str
) -> None:
    code = main(["train", "--resume", f"data.corpus={corpus}", f"run.out_dir={trained}",
                 "train.max_steps=6", *TINY, setting])
    assert code == 2
    line = error_line(capsys)
    assert f"{setting.split('=')[0]} cannot change on resume" in line


def test_resume_applies_a_new_learning_rate(
    trained: Path, corpus: Path, tmp_path: Path, capsys
) -> None:
    run = _copy(trained, tmp_path)
    assert main(["train", "--resume", f"data.corpus={corpus}", f"run.out_dir={run}",
                 "train.max_steps=5", "train.lr=1e-5", "train.eval_every=2", *TINY]) == 0
    assert "train.lr=1e-05 replaces the checkpoint's learning rate" in capsys.readouterr().out
    saved = load_checkpoint(run / "last.pt")
    assert saved["trainer"]["step"] == 5
    assert saved["optimizer"]["param_groups"][0]["lr"] == 1e-5


def test_a_carried_state_of_another_batch_is_refused(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, **{"train.max_steps": "1"})
    trainer.fit()
    saved = load_checkpoint(trainer.last_path)
    other = _trainer(tmp_path / "b", **{"train.batch_size": "6"})
    with pytest.raises(ValueError, match="train.batch_size=3 streams, but this run has "
                                         "train.batch_size=6"):
        other.task.load_state_dict(saved["task"])

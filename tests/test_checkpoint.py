"""Checkpoints are written atomically and unreadable ones give one clear error."""

from __future__ import annotations

import os

import pytest
import torch

from hmrnn.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def test_round_trip(tmp_path) -> None:
    path = save_checkpoint(tmp_path / "a.pt", {"model": {"w": torch.arange(3.0)}, "n": 4})
    data = load_checkpoint(path)
    assert torch.equal(data["model"]["w"], torch.arange(3.0)) and data["n"] == 4


def test_crash_mid_write_leaves_previous_checkpoint(tmp_path, monkeypatch) -> None:
    path = save_checkpoint(tmp_path / "last.pt", {"n": 1})

    def full_disk(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, {"n": 2})
    assert load_checkpoint(path)["n"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind


def test_truncated_and_corrupt(tmp_path) -> None:
    path = save_checkpoint(tmp_path / "a.pt", {"model": {"w": torch.ones(100)}})
    data = path.read_bytes()
    (tmp_path / "half.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "half.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_other_files_and_versions(tmp_path) -> None:
    torch.save({"weights": torch.ones(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an hmrnn checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    torch.save({"format": "hmrnn", "version": 99}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(tmp_path / "future.pt")


def test_run_folder_means_its_last_checkpoint(tmp_path) -> None:
    save_checkpoint(tmp_path / "last.pt", {"n": 7})
    assert load_checkpoint(tmp_path)["n"] == 7

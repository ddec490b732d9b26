"""Character LM: exact BPC, resume equals uninterrupted, non-finite steps, sampling."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
from helpers import RESUME_SETTINGS, tiny_trainer
from torch import nn

from hmrnn.data import Vocab
from hmrnn.model.types import RNNOutput
from hmrnn.tasks.charlm.build import build_charlm
from hmrnn.tasks.charlm.task import evaluate_lm, sample_text
from hmrnn.training.checkpoint import load_checkpoint
from hmrnn.training.config import load_config
from hmrnn.training.trainer import Trainer, TrainingError


class _Out(NamedTuple):
    logits: torch.Tensor
    rnn: RNNOutput
    state: Any


class BigramModel(nn.Module):
    """Predicts from a fixed table of log-probabilities: p(next | current)."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table

    def forward(self, x: torch.Tensor, state: Any = None) -> _Out:
        return _Out(self.table[x], RNNOutput((), None), None)


def test_bpc_against_hand_computation() -> None:
    rng = np.random.default_rng(0)
    V = 5
    probs = rng.dirichlet(np.ones(V), size=V)  # (V, V) rows sum to 1
    model = BigramModel(torch.log(torch.tensor(probs)))
    ids = rng.integers(0, V, size=97)
    expected = -np.mean([math.log2(probs[a, b]) for a, b in zip(ids[:-1], ids[1:], strict=True)])
    for batch_size, seq_len in ((1, 10), (3, 7), (8, 5), (200, 3)):
        result = evaluate_lm(model, ids, batch_size=batch_size, seq_len=seq_len)
        assert result.chars == 96
        assert result.bpc == pytest.approx(expected, rel=1e-12)
    uniform = BigramModel(torch.zeros(V, V))
    assert evaluate_lm(uniform, ids, batch_size=4, seq_len=9).bpc == pytest.approx(math.log2(V))


def test_given_boundaries_are_read_at_their_positions() -> None:
    """``boundaries`` rows follow ``ids``: given the boundaries a model produced itself, it
    scores what it scored free (the same streams, other windows); NaN hands every decision
    back to the detectors; other boundaries are taken as given, at any batch size."""
    torch.manual_seed(0)
    config = load_config(None, {"model.hidden_size": "12", "model.embedding_size": "6",
                                "model.output_size": "10"})
    model = build_charlm(config.model, 5).double()
    ids = np.random.default_rng(0).integers(0, 5, size=83)
    free = evaluate_lm(model, ids, batch_size=3, seq_len=7)
    assert free.boundary is not None
    own = np.concatenate([free.boundary[:, :-1], np.zeros((1, 2))])  # the last id: no input
    again = evaluate_lm(model, ids, batch_size=3, seq_len=5, boundaries=own)
    assert again.bpc == pytest.approx(free.bpc, rel=1e-9)
    assert np.array_equal(again.boundary, free.boundary)
    undecided = evaluate_lm(model, ids, batch_size=3, seq_len=9,
                            boundaries=np.full((83, 2), np.nan))
    assert undecided.bpc == pytest.approx(free.bpc, rel=1e-9)
    other = np.stack([np.arange(83) % 3 == 0, np.arange(83) % 9 == 0], axis=1).astype(float)
    for batch_size in (1, 4):
        given = evaluate_lm(model, ids, batch_size=batch_size, seq_len=5, boundaries=other)
        assert given.boundary is not None and np.array_equal(given.boundary[:, :2], other[:-1])
    assert given.bpc != pytest.approx(free.bpc, rel=1e-6)
    with pytest.raises(ValueError, match=r"one row per input position \(83\), got 82"):
        evaluate_lm(model, ids, boundaries=own[:-1])


def _text(tmp_path) -> str:
    rng = np.random.default_rng(1)
    words = ["ab", "cab", "bad", "dab", "abc"]
    text = " ".join(words[i] for i in rng.integers(0, 5, size=80))
    path = tmp_path / "text.txt"
    path.write_text(text)
    return str(path)


def _trainer(tmp_path, path: str, **overrides: str) -> Trainer:
    settings = RESUME_SETTINGS | {"train.max_lr_drops": "5",
                                  "run.out_dir": str(tmp_path / "run")} | overrides
    return tiny_trainer(Path(path), settings, (0.9, 0.05, 0.05))


def test_resume_equals_uninterrupted(tmp_path) -> None:
    path = _text(tmp_path)
    straight = _trainer(tmp_path / "a", path, **{"train.max_steps": "14"})
    assert straight.task.steps_per_epoch < 14  # the run crosses an epoch boundary
    straight.fit()
    first = _trainer(tmp_path / "b", path, **{"train.max_steps": "6"})
    first.fit()
    resumed = _trainer(tmp_path / "b", path, **{"train.max_steps": "14"})
    resumed.restore(load_checkpoint(first.last_path))
    assert resumed.state.step == 6
    resumed.fit()
    for (name, a), (_, b) in zip(straight.model.state_dict().items(),
                                 resumed.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert straight.lr == resumed.lr < 0.01  # the plateau schedule ran the same way
    # the interrupted run evaluated once more (at its stop), which may only move best.pt
    assert replace(straight.state, elapsed=0, wall=0, best_saved=0) == replace(
        resumed.state, elapsed=0, wall=0, best_saved=0)
    assert straight.model.rnn.slope.item() == resumed.model.rnn.slope.item() > 1.0


def test_non_finite_steps_are_skipped_then_stop(tmp_path, monkeypatch) -> None:
    path = _text(tmp_path)
    trainer = _trainer(tmp_path, path, **{"train.max_steps": "8", "train.max_nonfinite": "3"})
    real = trainer.task.train_loss
    bad_steps = {2}

    def flaky(model, step):
        loss, stats = real(model, step)
        return (loss * float("nan") if step in bad_steps else loss), stats

    monkeypatch.setattr(trainer.task, "train_loss", flaky)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    assert trainer.state.nonfinite_total == 1 and trainer.state.step == 8
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values())
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())

    again = _trainer(tmp_path / "c", path, **{"train.max_steps": "20", "train.max_nonfinite": "3"})
    again.save(again.last_path)
    good = load_checkpoint(again.last_path)["model"]
    bad_steps.update(range(0, 20))
    real = again.task.train_loss
    monkeypatch.setattr(again.task, "train_loss", flaky)
    with pytest.raises(TrainingError, match="3 steps in a row had a non-finite"):
        again.fit()
    saved = load_checkpoint(again.last_path)["model"]
    assert all(torch.equal(good[k], saved[k]) for k in good)


def test_sampling_is_reproducible_and_streams(tmp_path) -> None:
    vocab = Vocab.from_text("abc \n")
    config = load_config(None, {"model.hidden_size": "6", "model.embedding_size": "4",
                                "model.output_size": "5"})
    torch.manual_seed(0)
    model = build_charlm(config.model, len(vocab))
    stream = sample_text(model, vocab, length=30, prime="ab",
                         generator=torch.Generator().manual_seed(3))
    first = next(stream)
    assert isinstance(first, str) and len(first) == 1
    text = first + "".join(stream)
    again = "".join(sample_text(model, vocab, length=30, prime="ab",
                                generator=torch.Generator().manual_seed(3)))
    assert text == again and len(text) == 30 and set(text) <= set("abc \n")
    greedy = "".join(sample_text(model, vocab, length=10, top_k=1, prime="ab"))
    assert greedy == "".join(sample_text(model, vocab, length=10, top_k=1, prime="ab",
                                         generator=torch.Generator().manual_seed(9)))

"""Builders shared by several test modules (pytest puts this folder on ``sys.path``)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from hmrnn.data import read_text_file
from hmrnn.model.hmlstm import HMLSTM, HMLSTMState
from hmrnn.tasks.charlm.build import build_charlm
from hmrnn.tasks.charlm.task import CharLMTask
from hmrnn.training.config import load_config
from hmrnn.training.distributed import DistContext
from hmrnn.training.trainer import Trainer

SLOPE = 1.7  # the slope of wide_hmlstm's models


def wide_hmlstm(
    input_size: int, sizes: tuple[int, ...], mode: str = "step", layer_norm: bool = False,
    seed: int = 0,
) -> HMLSTM:
    """A float64 HM-LSTM whose parameters are wide enough that boundaries both fire and
    not, so that every layer does UPDATE, COPY and FLUSH: layer-norm gains uniform in
    [0.5, 1.5] and biases in [-0.5, 0.5], every other parameter in [-1, 1]; slope SLOPE."""
    torch.manual_seed(seed)
    rnn = HMLSTM(input_size, sizes, len(sizes), boundary=mode, layer_norm=layer_norm,
                 dtype=torch.float64)
    with torch.no_grad():
        for name, p in rnn.named_parameters():
            if ".ln_" in name:
                p.uniform_(0.5, 1.5) if name.endswith("weight") else p.uniform_(-0.5, 0.5)
            else:
                p.uniform_(-1.0, 1.0)
    rnn.set_slope(SLOPE)
    return rnn


def random_state(
    sizes: tuple[int, ...], batch: int, seed: int, device: torch.device,
    dtype: torch.dtype = torch.float64,
) -> HMLSTMState:
    """A non-zero initial state with some boundaries on, every tensor requiring grad."""
    g = torch.Generator().manual_seed(seed)

    def leaf(*shape: int, binary: bool = False) -> torch.Tensor:
        x = torch.rand(*shape, generator=g, dtype=torch.float64)
        x = (x > 0.5).double() if binary else x * 2 - 1
        return x.to(device, dtype).requires_grad_()

    return HMLSTMState(tuple(leaf(batch, h) for h in sizes),
                       tuple(leaf(batch, h) for h in sizes),
                       tuple(leaf(batch, 1, binary=True) for _ in sizes))


def loop_outputs(rnn: HMLSTM, x: torch.Tensor, state: HMLSTMState) -> list[torch.Tensor]:
    """Everything the stack returns, flat: hidden states, boundaries, the last h, c, z."""
    out, last = rnn(x, state, generator=torch.Generator(x.device).manual_seed(3))
    return [*out.hidden, out.boundary, *last.h, *last.c, *last.z]


def outputs_and_grads(
    rnn: HMLSTM, fast: bool, x: torch.Tensor, state: HMLSTMState, weights: list[torch.Tensor]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """:func:`loop_outputs` through the fast loop or the cell loop, and the gradients of a
    loss reading every output (weighted by ``weights``) in the input, the initial state and
    every parameter."""
    rnn.fast = fast
    values = loop_outputs(rnn, x, state)
    loss = sum((v * w).sum() for v, w in zip(values, weights, strict=True))
    inputs = [x, *state.h, *state.c, *state.z, *rnn.parameters()]
    grads = torch.autograd.grad(loss, inputs)  # type: ignore[arg-type]
    return [v.detach() for v in values], list(grads)


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """What a command wrote on stderr, checked to be one line and no stack trace."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


def write_words(folder: Path, words: int = 120) -> Path:
    """Write ``folder/text.txt``: ``words`` words drawn (seed 1) from five of a, b, c, d."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    vocab = ["ab", "cab", "bad", "dab", "abc"]
    path = folder / "text.txt"
    path.write_text(" ".join(vocab[i] for i in rng.integers(0, 5, size=words)))
    return path


# A tiny resumable run with sampled boundaries (test_lm on the CPU, test_cuda on a GPU);
# add run.out_dir.
RESUME_SETTINGS = {
    "model.hidden_size": "6,5,4", "model.embedding_size": "4", "model.output_size": "7",
    "model.boundary": "sample", "train.batch_size": "3", "train.seq_len": "8",
    "train.eval_every": "4", "train.eval_batch_size": "5", "train.patience": "1",
    "train.lr": "0.05", "train.slope_rate": "0.5", "run.progress": "false",
    "run.tensorboard": "false", "train.max_minutes": "0",
}


def tiny_trainer(
    text: Path, settings: dict[str, str], fractions: tuple[float, float, float],
    context: DistContext | None = None, echo: Callable[[str], None] = lambda _m: None,
) -> Trainer:
    """A trainer of a character LM configured by ``settings`` on the file ``text`` (split
    by ``fractions``), its model built after ``torch.manual_seed(0)`` on the context's
    device."""
    config = load_config(None, settings)
    corpus = read_text_file(text, fractions=fractions)
    torch.manual_seed(0)
    model = build_charlm(config.model, len(corpus.vocab)).to((context or DistContext()).device)
    return Trainer(CharLMTask(model, corpus, config, context), config, context, echo=echo)


class Terminal(io.StringIO):
    """A stream that says it is a terminal: put as ``sys.stderr``, progress bars draw into it
    (they draw nothing into a stream that is not one)."""

    def isatty(self) -> bool:
        return True

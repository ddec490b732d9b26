"""The character-level language model of the paper's section 4.1.

    x_t (ids) -> embedding (linear lookup, no nonlinearity) -> recurrent stack
      -> gated output module h^e (Eq. 11-12) -> logits over the vocabulary
"""

from __future__ import annotations

from typing import Any, NamedTuple, cast

from torch import Tensor, nn

from hmrnn.model.output import GatedOutput
from hmrnn.model.types import RecurrentStack, RNNOutput


class CharLMOutput(NamedTuple):
    """``logits (T, N, V)``, the stack's :class:`RNNOutput`, and the carried state."""

    logits: Tensor
    rnn: RNNOutput
    state: Any


class CharLM(nn.Module):
    """Character language model around any hmrnn recurrent stack.

    Args:
        vocab_size: ``V``.
        rnn: a recurrent stack (:class:`hmrnn.HMLSTM` or a baseline), time-major, whose
            ``input_size`` is the embedding size.
        output_size: ``E``, the size of the gated output embedding.

    Inputs: ``x (T, N)`` int64 symbol ids, ``state`` (the stack's, or ``None``);
    ``boundaries``, given boundaries for a stack that takes them (:class:`hmrnn.HMLSTM`).
    Outputs: :class:`CharLMOutput`.
    """

    def __init__(self, vocab_size: int, rnn: nn.Module, output_size: int) -> None:
        super().__init__()
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be positive, got {vocab_size}")
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, self._stack(rnn).input_size)
        self.rnn = rnn
        self.output = GatedOutput(self._stack(rnn).hidden_sizes, output_size)
        self.head = nn.Linear(output_size, vocab_size)

    def forward(self, x: Tensor, state: Any = None, *,
                boundaries: Tensor | None = None) -> CharLMOutput:
        given = {} if boundaries is None else {"boundaries": boundaries}
        out, state = self.rnn(self.embedding(x), state, **given)
        logits = self.head(self.output(out.hidden))  # (T, N, V)
        return CharLMOutput(logits, out, state)

    def initial_state(self, batch_size: int) -> Any:
        return self._stack(self.rnn).initial_state(batch_size)

    @staticmethod
    def _stack(rnn: nn.Module) -> RecurrentStack:
        return cast(RecurrentStack, rnn)

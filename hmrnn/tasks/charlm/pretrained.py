"""One-line loading of a trained character model: ``hmrnn.load(path)``.

::

    import hmrnn
    lm = hmrnn.load("runs/default")          # a run folder (best.pt, else last.pt) or a .pt file
    lm.generate("the cat ", length=100, seed=0)
    lm.encode("the cat")                     # LongTensor of ids;  lm.decode(ids) -> str
    lm(lm.encode("the cat")).logits          # (T, 1, V): the CharLM forward pass
    lm.boundaries("the cat sat")             # (T, L) boundary states z, one column per layer

:class:`CharModel` is an :class:`torch.nn.Module` around the :class:`hmrnn.model.charlm.CharLM`
(``.model``), its vocabulary (``.vocab``) and the config it was trained with (``.config``):
``.to(device)``, ``.parameters()`` and ``.state_dict()`` work as on any module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from hmrnn.data import Vocab
from hmrnn.model.charlm import CharLM, CharLMOutput
from hmrnn.tasks.charlm.task import load_charlm, sample_text, trace_text
from hmrnn.training.checkpoint import CheckpointError, load_checkpoint
from hmrnn.training.config import Config

__all__ = ["CharModel", "load"]


class CharModel(nn.Module):
    """A trained character-level language model, ready to encode, score, sample and trace.

    Attributes:
        model: the :class:`~hmrnn.model.charlm.CharLM` (in evaluation mode).
        vocab: the :class:`~hmrnn.data.Vocab` of its characters.
        config: the :class:`~hmrnn.training.config.Config` it was trained with.
        path: the checkpoint file it was read from (None when built directly).
        step: the training step of that checkpoint (None when unknown).
    """

    def __init__(
        self,
        model: CharLM,
        vocab: Vocab,
        config: Config,
        *,
        path: str | Path | None = None,
        step: int | None = None,
        corpus: str | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.vocab = vocab
        self.config = config
        self.path = None if path is None else Path(path)
        self.step = step
        self.corpus = corpus
        self.eval()

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters."""
        return next(self.model.parameters()).device

    def encode(self, text: str) -> Tensor:
        """``text`` as a ``(len(text),)`` LongTensor of ids on the model's device.

        Raises:
            ValueError: (:class:`hmrnn.data.UnknownSymbolError`) a character the model's
                vocabulary lacks, named with its position.
        """
        ids = self.vocab.encode(text, where="the text")
        return torch.as_tensor(ids, dtype=torch.long, device=self.device)

    def decode(self, ids: Any) -> str:
        """The text of ``ids`` (a tensor on any device, a numpy array or a list; any shape,
        read in row-major order)."""
        if isinstance(ids, Tensor):
            ids = ids.detach().cpu()
        return self.vocab.decode(ids)

    def forward(self, ids: Tensor | str, state: Any = None) -> CharLMOutput:
        """The :class:`~hmrnn.model.charlm.CharLMOutput` of reading ``ids``.

        Args:
            ids: ``(T,)`` ids of one text (read as one stream: the output has ``N = 1``),
                ``(T, N)`` ids of N streams, or a ``str`` (encoded first).
            state: the state a previous call returned (``output.state``), or None.

        Returns:
            ``logits (T, N, V)``, the stack's output (``.rnn.hidden``, ``.rnn.boundary``)
            and the state to carry on with.
        """
        x = self.encode(ids) if isinstance(ids, str) else torch.as_tensor(ids, device=self.device)
        if x.dim() == 1:
            x = x[:, None]
        if x.dim() != 2:
            raise ValueError(f"ids must be (T,) or (T, N), got shape {tuple(x.shape)}")
        return self.model(x.long(), state)

    @torch.no_grad()
    def generate(
        self,
        prime: str = "",
        length: int = 200,
        temperature: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
    ) -> str:
        """Sample ``length`` characters that follow ``prime`` (``prime`` is not repeated).

        Args:
            prime: text the model reads first (its characters must be in the vocabulary);
                empty: the model starts after a newline.
            length: how many characters to generate (the length of the result).
            temperature: > 0 divides the logits (lower: more conservative); 0 is greedy
                decoding (always the likeliest character).
            top_k: sample among the k likeliest characters only (0: all).
            seed: makes the sample reproducible (the same seed gives the same text); None
                draws from torch's global generator. The global random state is not changed
                when a seed is given.
        """
        with torch.random.fork_rng(devices=self._rng_devices(), enabled=seed is not None):
            generator = None
            if seed is not None:
                torch.manual_seed(seed)  # for boundary="sample" models' Bernoulli draws
                generator = torch.Generator().manual_seed(seed)
            return "".join(
                sample_text(self.model, self.vocab, length=length, temperature=temperature,
                            top_k=top_k, prime=prime, generator=generator, device=self.device)
            )

    def boundaries(self, text: str) -> np.ndarray:
        """The boundary states ``z`` while reading ``text`` from a zero state.

        Returns:
            ``(len(text), L)`` float array of 0/1, column l the boundary detector of layer
            l + 1 (``z^{l+1}``); the top layer's column is always 0, and a stack without
            boundary detectors (an LSTM baseline) gives all zeros.
        """
        boundary, _ = trace_text(self.model, self.vocab, text, device=self.device)
        return boundary

    def hidden_norms(self, text: str) -> np.ndarray:
        """``(len(text), L)`` L2 norm of every layer's hidden state while reading ``text``."""
        _, norms = trace_text(self.model, self.vocab, text, device=self.device)
        return norms

    def _rng_devices(self) -> list[int]:
        device = self.device
        if device.type == "cuda":
            return [device.index if device.index is not None else torch.cuda.current_device()]
        return []

    def __repr__(self) -> str:
        m = self.config.model
        sizes = list(m.hidden_size) * (m.num_layers if len(m.hidden_size) == 1 else 1)
        params = sum(p.numel() for p in self.model.parameters())
        parts = [
            f"{m.rnn} {m.num_layers} layers {'x'.join(map(str, sizes))}"
            + (" layer-norm" if m.layer_norm else ""),
            f"vocabulary {len(self.vocab)}",
            f"{params:,} parameters",
        ]
        if self.corpus:
            parts.append(f"corpus {self.corpus}")
        if self.step is not None:
            parts.append(f"step {self.step}")
        if self.path is not None:
            parts.append(f"from {self.path}")
        parts.append(f"device {self.device}")
        return f"CharModel({', '.join(parts)})"


def _checkpoint_file(path: str | Path) -> Path:
    """The checkpoint file ``path`` names: itself, or a run folder's best.pt, else last.pt."""
    p = Path(path)
    if p.is_dir():
        for name in ("best.pt", "last.pt"):
            if (p / name).is_file():
                return p / name
        raise FileNotFoundError(f"{p} is a folder without a checkpoint (best.pt or last.pt)")
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    return p


def load(path: str | Path, device: torch.device | str = "cpu") -> CharModel:
    """Load a trained character model in one line, ready to use.

    Args:
        path: a checkpoint file (``best.pt``, ``last.pt``) or a run folder, whose
            ``best.pt`` is read (``last.pt`` when there is no ``best.pt``).
        device: where the model goes (``"cpu"``, ``"cuda"``, a :class:`torch.device`).

    Returns:
        a :class:`CharModel` in evaluation mode.

    Raises:
        FileNotFoundError: ``path`` does not exist, or is a folder without a checkpoint.
        ValueError: not an hmrnn checkpoint, damaged, from an incompatible version, or the
            checkpoint of another task (handwriting): a
            :class:`hmrnn.training.checkpoint.CheckpointError`, itself a ``ValueError``.
    """
    file = _checkpoint_file(path)
    try:
        model, vocab, config, checkpoint = load_charlm(file, device)
    except CheckpointError:
        kind = load_checkpoint(file, map_location="cpu").get("kind")  # re-raises if unreadable
        if kind == "charlm":
            raise
        raise CheckpointError(
            f"{file} holds a {kind!r} model, not a character language model: hmrnn.load reads "
            "the checkpoints of `hmrnn train`"
            + ("; use `hmrnn handwriting sample` for this one" if kind == "handwriting" else "")
        ) from None
    trainer = checkpoint.get("trainer")
    step = trainer.get("step") if isinstance(trainer, dict) else None
    corpus = checkpoint.get("corpus")
    return CharModel(
        model, vocab, config, path=file, step=int(step) if step is not None else None,
        corpus=str(corpus) if corpus is not None else None,
    ).to(device)

"""Character-level language modelling: the training task, exact BPC evaluation, sampling.

The task plugs into :class:`hmrnn.training.trainer.Trainer`: N parallel streams read in segments
of T characters, the recurrent state ``(h, c, z)`` carried from one segment to the next
(detached: truncated BPTT), every stream restarting from zeros at the start of an epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from hmrnn.analysis.boundaries import after_word_boundaries, boundary_prf, text_boundaries
from hmrnn.data import Corpus, StreamBatcher, Vocab, eval_batches
from hmrnn.model.charlm import CharLM
from hmrnn.model.graphed import GraphedStack, graph_stacks
from hmrnn.model.types import detach_state, map_state, state_from_plain, state_to_plain
from hmrnn.progress import progress_bar
from hmrnn.tasks.charlm.build import build_charlm
from hmrnn.tasks.hooks import BoundaryTraining, anneal_slope
from hmrnn.training.checkpoint import load_model
from hmrnn.training.config import Config
from hmrnn.training.distributed import DistContext

LN2 = math.log(2.0)


@dataclass
class LMEvaluation:
    """BPC of a whole split, and the boundaries the model produced while reading it.

    Attributes:
        nll: mean negative log-likelihood in nats per character (every target scored once).
        bpc: ``nll / ln 2``.
        chars: the number of scored characters (``len(split) - 1``).
        boundary: ``(chars, L)`` z of every layer at every input position, in text order
            (None when not collected).
    """

    nll: float
    bpc: float
    chars: int
    boundary: np.ndarray | None

    def boundary_rates(self) -> list[float]:
        """Fraction of steps at which each layer below the top fired."""
        if self.boundary is None:
            return []
        return [float(r) for r in self.boundary[:, :-1].mean(axis=0)]


def _wide(logits: Tensor) -> Tensor:
    """``(T, N, V) -> (T*N, V)`` in at least float32 (half-precision logits are widened)."""
    return logits.flatten(0, 1).to(torch.promote_types(logits.dtype, torch.float32))


@torch.no_grad()
def evaluate_lm(
    model: CharLM,
    ids: np.ndarray,
    *,
    batch_size: int = 64,
    seq_len: int = 100,
    device: torch.device | str = "cpu",
    context: DistContext | None = None,
    collect_boundaries: bool = True,
    progress: bool = False,
    boundaries: np.ndarray | None = None,
) -> LMEvaluation:
    """Exact bits per character of ``ids``: every target ``ids[1:]`` scored exactly once.

    The split is read as ``batch_size`` contiguous streams, each from a zero state carried
    through all its windows (:func:`hmrnn.data.eval_batches`). In a data-parallel run of W
    processes ``batch_size`` is per process: the split is cut into ``batch_size * W``
    streams, process r reads the r-th group of ``batch_size``, the sums are reduced and the
    boundaries gathered, so every process gets what one process reading all
    ``batch_size * W`` streams would. ``progress`` shows a bar of the characters scored
    (:func:`hmrnn.progress.progress_bar`, on stderr when it is a terminal).

    ``boundaries`` ``(len(ids), L - 1)`` of 0, 1 or NaN: an HM-LSTM's boundaries given at
    each input position in place of its detectors' (NaN: the detector decides;
    :meth:`hmrnn.model.hmlstm.HMLSTM.forward`).
    """
    context = context or DistContext()
    if boundaries is not None and len(boundaries) != len(ids):
        raise ValueError(f"given boundaries: one row per input position ({len(ids)}), "
                         f"got {len(boundaries)}")
    was_training = model.training
    model.eval()
    batches = eval_batches(ids, batch_size * context.world_size, seq_len)
    given = None if boundaries is None else torch.as_tensor(boundaries, dtype=torch.float32)
    cols = slice(context.rank * batch_size, (context.rank + 1) * batch_size)
    state = None
    total = torch.zeros(2, dtype=torch.float64, device=device)  # nll sum, count
    zs: list[Tensor] = []
    masks: list[Tensor] = []
    bar = progress_bar(total=batches.num_targets, desc="evaluate", unit="char",
                       enabled=progress, unit_scale=True, leave=False)
    for (x, y, window), (positions, _) in zip(batches, batches.positions(), strict=True):
        x, y, mask = x[:, cols].to(device), y[:, cols].to(device), window[:, cols].to(device)
        at = torch.from_numpy(positions[:, cols])  # (T, N): each input's index into ids
        extra = {} if given is None else {"boundaries": given[at].to(device)}
        out = model(x, state, **extra)
        state = out.state
        nll = F.cross_entropy(_wide(out.logits), y.flatten(), reduction="none")
        total[0] += nll[mask.flatten()].double().sum()
        total[1] += mask.sum()
        if collect_boundaries and out.rnn.boundary is not None:
            zs.append(out.rnn.boundary.cpu())
            masks.append(mask.cpu())
        bar.update(int(window.sum()))
    bar.close()
    model.train(was_training)
    total = context.all_reduce_sum(total)
    nll_mean = float(total[0] / total[1])
    boundary = None
    if zs:
        z = torch.cat(zs).transpose(0, 1)  # (N, S, L): stream-major is text order
        mine = z[torch.cat(masks).transpose(0, 1)].float()  # (this process's chars, L)
        # process r holds streams r*N..(r+1)*N-1, so rank order continues the text order
        boundary = context.all_gather_rows(mine).numpy()  # (chars, L)
    return LMEvaluation(nll_mean, nll_mean / LN2, int(total[1]), boundary)


def segment_references(corpus: Corpus, split: str) -> dict[str, np.ndarray]:
    """True segment ends of a split at its input positions (``len - 1``): the synthetic
    corpus's own word and phrase ends, else the word ends only, the last character before
    each space, ``_`` or newline."""
    if corpus.boundaries is not None:
        truth = corpus.boundaries[split]
        return {kind: truth[kind][:-1] for kind in ("word", "phrase")}
    text = corpus.vocab.decode(corpus.splits[split][:-1])
    return {"word": text_boundaries(text, convention="last")}


class CharLMTask:
    """The character-level language modelling task for :class:`hmrnn.training.trainer.Trainer`."""

    kind = "charlm"

    def __init__(
        self, model: CharLM, corpus: Corpus, config: Config, context: DistContext | None = None
    ) -> None:
        self.model = model
        self.corpus = corpus
        self.config = config
        self.context = context or DistContext()
        cfg = config.train
        self.batcher = StreamBatcher(corpus.splits["train"], cfg.batch_size, cfg.seq_len)
        self.cols = self.batcher.rank_slice(self.context.rank, self.context.world_size)
        self.steps_per_epoch = self.batcher.num_segments
        self.symbols_per_step = cfg.batch_size * cfg.seq_len
        self.state: Any = None
        self._pending: Any = None
        self._references = {
            split: segment_references(corpus, split) for split in ("valid", "test")
        }
        self.boundaries = BoundaryTraining(model.rnn, cfg, self.context)
        self._warmup: tuple[StreamBatcher, Tensor] | None = None
        if cfg.separator_warmup:
            train = corpus.splits["train"]
            after_words = after_word_boundaries(corpus.vocab.decode(train))
            self._warmup = (StreamBatcher(np.arange(len(train)), cfg.batch_size, cfg.seq_len),
                            torch.from_numpy(after_words.astype(np.float32)))

    def on_step(self, epoch: float) -> dict[str, float]:
        """Anneal an HM-LSTM's slope for ``epoch``; ``{"slope": a}`` to show (else ``{}``)."""
        return anneal_slope(self.model.rnn, epoch, self.config.train)

    def warnings(self, metrics: dict[str, Any]) -> list[str]:
        """Layers whose boundary rate has collapsed toward 0 or 1."""
        return self.boundaries.warnings(metrics)

    def train_loss(self, model: nn.Module, step: int) -> tuple[Tensor, dict[str, Any]]:
        k = step % self.steps_per_epoch
        if k == 0:
            self.state = None  # every stream starts again from the beginning
        x, y = self.batcher.segment(k)
        device = self.context.device
        x, y = x[:, self.cols].to(device), y[:, self.cols].to(device)
        out = model(x, self.state, **self._given(step, k))
        logits, targets = _wide(out.logits), y.flatten()
        loss = F.cross_entropy(logits, targets)
        stats: dict[str, Any] = {"bpc": float(loss.detach()) / LN2}
        surprisal = (F.cross_entropy(logits.detach(), targets, reduction="none").view(y.shape)
                     if self.boundaries.uses_surprisal else None)
        rate_loss = self.boundaries.loss(out.rnn.boundary, surprisal)
        if rate_loss is not None:
            loss = loss + rate_loss
        if out.rnn.boundary is not None:
            stats["z"] = out.rnn.boundary[..., :-1].float().mean(dim=(0, 1)).tolist()
        self.boundaries.observe(step, stats, lambda: self.model.embedding(x), self.state,
                                out.rnn)
        self._pending = detach_state(out.state)
        return loss, stats

    def _given(self, step: int, k: int) -> dict[str, Tensor]:
        """``{"boundaries": (T, N, L - 1)}`` for segment ``k`` of global step ``step`` during
        ``separator_warmup``: layer 1 on the characters after words, NaN above (those
        detectors decide); ``{}`` after it."""
        if self._warmup is None or step >= self.config.train.separator_warmup:
            return {}
        positions, after_words = self._warmup
        at, _ = positions.segment(k)  # (T, N): each input's index into the training split
        given = torch.full((*at.shape, self.config.model.num_layers - 1), math.nan)
        given[..., 0] = after_words[at]
        return {"boundaries": given[:, self.cols].to(self.context.device)}

    def end_step(self, accepted: bool) -> None:
        if accepted:
            self.state = self._pending
        self.boundaries.end_step(accepted)
        self._pending = None

    def evaluate(self, split: str) -> dict[str, Any]:
        """BPC, boundary rates and layer-1 word-boundary F1 of the split, or of its first
        ``train.eval_chars`` characters when that is not 0."""
        cfg = self.config.train
        ids = self.corpus.splits[split]
        if cfg.eval_chars:
            ids = ids[: cfg.eval_chars + 1]  # the inputs and targets of eval_chars characters
        result = evaluate_lm(
            self.model, ids, batch_size=cfg.eval_batch_size, seq_len=cfg.seq_len,
            device=self.context.device, context=self.context,
            progress=self.config.run.progress and self.context.is_main,
        )
        metrics: dict[str, Any] = {"loss": result.nll, "bpc": result.bpc}
        if result.boundary is not None:
            metrics["z"] = result.boundary_rates()
            references = {kind: ends[: result.chars]
                          for kind, ends in self._references[split].items()}
            z = result.boundary > 0.5
            metrics["f1_word"] = boundary_prf(z[:, 0], references["word"], tolerance=1).f1
            if "phrase" in references and z.shape[1] > 2:  # layer 2 has a detector
                metrics["f1_phrase"] = boundary_prf(z[:, 1], references["phrase"],
                                                    tolerance=1).f1
        return {**metrics, **self.boundaries.last}  # the detectors as last measured in training

    def state_dict(self) -> dict[str, Any]:
        """The carried state of every stream (gathered from all processes)."""
        state = self.state
        if state is not None:
            state = map_state(
                lambda t: self.context.all_gather_cat(t, 0) if t.dim() > 0 else t, state
            )
            state = state_to_plain(map_state(lambda t: t.cpu(), state))
        return {"state": state}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        plain = saved["state"]
        if plain is None:
            self.state = None
            return
        template = self.model.initial_state(1)
        device = self.context.device
        batches: set[int] = set()
        map_state(lambda t: batches.add(t.shape[0]) if t.dim() > 0 else None,
                  state_from_plain(template, plain))
        if batches != {self.config.train.batch_size}:
            # the C step would read past a state of another batch: never carry one over
            raise ValueError(
                f"--resume: the checkpoint carries the state of train.batch_size="
                f"{'/'.join(map(str, sorted(batches)))} streams, but this run has "
                f"train.batch_size={self.config.train.batch_size}; keep the batch size")
        self.state = map_state(
            lambda t: (t[self.cols] if t.dim() > 0 else t).to(device),
            state_from_plain(template, plain),
        )

    def graph_stacks(self) -> list[GraphedStack]:
        return graph_stacks(self.model)

    def checkpoint_extras(self) -> dict[str, Any]:
        return {"vocab": self.corpus.vocab.to_list(), "corpus": self.corpus.name}


def load_charlm(path: str | Path, device: torch.device | str = "cpu") -> tuple[
    CharLM, Vocab, Config, dict[str, Any]
]:
    """Rebuild a trained character model from a checkpoint (file or run folder)."""
    model, config, checkpoint = load_model(
        path, "charlm",
        lambda config, ckpt: build_charlm(config.model, len(ckpt["vocab"])), device,
    )
    vocab = Vocab.from_list(checkpoint["vocab"])
    return model, vocab, config, checkpoint


@torch.no_grad()
def sample_text(
    model: CharLM,
    vocab: Vocab,
    *,
    length: int = 200,
    temperature: float = 1.0,
    top_k: int = 0,
    prime: str = "",
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Iterator[str]:
    """Generate ``length`` characters one at a time (a generator: stream them as they come).

    Args:
        prime: text read first (its characters must be in the vocabulary); when empty the
            model starts after a newline (or the first symbol if there is none).
        temperature: > 0 divides the logits; 0 is greedy decoding (always the likeliest
            character).
        top_k: sample among the k most likely characters only (0: all).
        generator: random generator, for reproducible samples.
    """
    if not 0 <= temperature < math.inf:  # NaN too
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if temperature == 0:  # greedy: keeping only the likeliest character is the argmax
        temperature, top_k = 1.0, 1
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    model.eval()
    start = prime or ("\n" if "\n" in vocab else vocab.symbols[0])
    ids = torch.as_tensor(vocab.encode(start, where="the priming text"), device=device)
    out = model(ids[:, None], None)  # (T, 1) at once
    logits, state = out.logits[-1, 0], out.state
    for _ in range(length):
        logits = logits.float() / temperature
        if 0 < top_k < logits.numel():
            kth = torch.topk(logits, top_k).values[-1]
            logits = logits.masked_fill(logits < kth, -math.inf)
        probs = torch.softmax(logits, dim=-1).cpu()
        next_id = int(torch.multinomial(probs, 1, generator=generator))
        yield vocab.decode([next_id])
        out = model(torch.tensor([[next_id]], device=device), state)
        logits, state = out.logits[-1, 0], out.state


@torch.no_grad()
def trace_text(
    model: CharLM, vocab: Vocab, text: str, device: torch.device | str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Read ``text`` from a zero state and record the hierarchy the model builds over it.

    Returns:
        boundary: ``(T, L)`` z of every layer at every character (zeros for stacks without
            boundaries).
        hidden_norms: ``(T, L)`` the L2 norm of each layer's h at every character.
    """
    ids = torch.as_tensor(vocab.encode(text, where="the text"), device=device)
    model.eval()
    out = model(ids[:, None], None)
    norms = torch.stack([h[:, 0].float().norm(dim=-1) for h in out.rnn.hidden], dim=1)
    boundary = (
        out.rnn.boundary[:, 0].float() if out.rnn.boundary is not None
        else torch.zeros_like(norms)
    )
    return boundary.cpu().numpy(), norms.cpu().numpy()

"""The training loop of the paper's section 4, for any task.

It knows nothing of corpora or of what a batch is: a :class:`Task` supplies the loss of
global step ``k`` and evaluations; the trainer owns the optimiser (Adam), gradient-norm
clipping, the learning-rate drop when validation stops improving, early stopping,
checkpoints (best and last), resume, signals and logging. What is particular to a model
(e.g. annealing an HM-LSTM's slope) or to its metrics (e.g. warning of collapsed
boundaries) the task does, through :meth:`Task.on_step` and :meth:`Task.warnings`.

Resume is exact: the data position is a function of the step, and the model, optimiser,
task state (e.g. the carried recurrent state), trainer counters and RNG states are all in
the checkpoint, so a resumed run equals an uninterrupted one bit for bit on the CPU.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hmrnn._io import temporary_name
from hmrnn.progress import around_bars, progress_bar
from hmrnn.training.checkpoint import (
    CheckpointError,
    nonfinite_tensors,
    remove_stale_temporaries,
    save_checkpoint,
    serialize_checkpoint,
)
from hmrnn.training.config import Config, validate_config
from hmrnn.training.distributed import DistContext
from hmrnn.training.gpu import GpuTraining, gpu_training
from hmrnn.training.pace import SymbolRate, format_metrics, plain_line, planned_steps
from hmrnn.training.records import RunRecords
from hmrnn.training.run_dir import write_config
from hmrnn.training.task import Task

PRECISIONS = ("fp32", "bf16", "fp16")
PLAIN_LOG_SECONDS = 10.0
"""Without a progress bar, a logged step prints a line if the last was this long ago."""
TENSORBOARD_MISSING = (
    "note: run.tensorboard is on but TensorBoard is not installed: metrics go to "
    "metrics.jsonl only (pip install 'hmrnn[tensorboard]', or run.tensorboard=false)")


def clip_gradients(parameters: Iterable[nn.Parameter], max_norm: float) -> Tensor:
    """Scale the gradients to a total norm of at most ``max_norm``; return the norm before.

    As ``torch.nn.utils.clip_grad_norm_``, but the norm is summed in float64: float32
    gradients whose squares overflow float32 are still finite, and are clipped rather than
    reported as an infinite norm (which skips the step). The layer-normalised HM-LSTM's
    gradient at initialisation reaches such sizes (docs/design-notes.md); a float32 sum of
    squares overflowed on an H100 at 3 x 512, and training stopped after 20 skipped steps.
    ``max_norm`` 0 (``train.clip=0``) only measures: no clipping.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norm = torch.linalg.vector_norm(torch.stack(
        [torch.linalg.vector_norm(g, dtype=torch.float64) for g in grads]))
    if max_norm <= 0:
        return norm
    scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.to(g.dtype))
    return norm


@contextmanager
def seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Run a block on torch's RNG seeded with ``seed``, then give the caller's RNG back.

    ``torch.manual_seed`` seeds the CPU and every GPU, so the RNG of ``device`` is put back
    too when it is a GPU: a CUDA run's sampled boundaries draw from it.
    """
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


class TrainingError(RuntimeError):
    """Training cannot go on (one line, for the CLI)."""


@dataclass
class TrainerState:
    """Counters saved in every checkpoint."""

    step: int = 0
    best_valid: float = math.inf  # best scheduled evaluation: drives the learning-rate drops
    best_saved: float = math.inf  # best of all evaluations: the model in best.pt
    bad_evals: int = 0
    lr_drops: int = 0
    nonfinite_total: int = 0
    elapsed: float = 0.0  # seconds of training, summed over resumed runs
    wall: float = 0.0  # seconds since the run started (evaluations too), over resumed runs


@dataclass
class FitResult:
    stopped_by: str
    step: int
    best_valid: float
    last_checkpoint: Path | None  # the newest good last.pt (None: none was ever written)
    best_checkpoint: Path | None
    valid: dict[str, Any] | None


class Trainer:
    """Train ``task.model`` as ``config.train`` says, writing into ``out_dir``.

    Args:
        task: the :class:`Task`.
        config: the resolved run configuration (stored in every checkpoint).
        context: this process's place in a data-parallel run.
        echo: where one-line messages go (only the main process echoes).

    Checkpoints are never written with a non-finite tensor, nor at an evaluation whose
    validation loss is not finite; ``last.pt`` is written before the final validation.
    ``fit`` writes ``config.toml`` and ``metrics.jsonl`` (:mod:`hmrnn.training.metrics_log`:
    metrics, and events such as learning-rate drops and warnings) into ``out_dir``.

    Raises:
        ConfigError: a config field outside its allowed range.
        ValueError: if ``run.precision`` is not fp32 on a device other than CUDA (autocast
            is only used on CUDA).
    """

    def __init__(
        self,
        task: Task,
        config: Config,
        context: DistContext | None = None,
        *,
        echo: Callable[[str], None] = print,
    ) -> None:
        self.task = task
        self.config = validate_config(config)
        self.train_cfg = config.train
        self.context = context or DistContext()
        precision = config.run.precision
        if precision not in PRECISIONS:
            raise ValueError(
                f"run.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if precision != "fp32" and self.context.device.type != "cuda":
            raise ValueError(
                f"run.precision={precision} needs a CUDA device (mixed precision is only used "
                f"on CUDA), but this run is on {self.context.device}; use run.precision=fp32")
        self.out_dir = Path(config.run.out_dir)
        # messages clear the progress bars and redraw them after, never glued onto them
        self.echo = around_bars(echo) if self.context.is_main else (lambda _msg: None)
        self.model = task.model
        self.wrapped = self.context.wrap(self.model)
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=self.train_cfg.lr, betas=(0.9, self.train_cfg.adam_beta2),
            weight_decay=self.train_cfg.weight_decay)
        self.state = TrainerState()
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        self._signal: int | None = None
        self._interrupt_now = False  # a signal raises KeyboardInterrupt at once
        self.records = RunRecords(self.out_dir, tensorboard=config.run.tensorboard,
                                  is_main=self.context.is_main, echo=self.echo)
        self._good: tuple[Path, int] | None = None  # the newest last.pt written, its step
        self._saved_step = -1  # the step last.pt was last settled at (written or refused)

    # -- checkpoints -------------------------------------------------------------------

    @property
    def last_path(self) -> Path:
        return self.out_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.out_dir / "best.pt"

    def _payload(self) -> dict[str, Any]:
        self.state.wall = self.records.wall()
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        payload = {
            "kind": self.task.kind,
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "trainer": dataclasses.asdict(self.state),
            "task": self.task.state_dict(),
            "rng": rng,
            **self.task.checkpoint_extras(),
        }
        if self.scaler is not None:
            payload["scaler"] = self.scaler.state_dict()
        return payload

    def good_checkpoint(self) -> str:
        """Where the newest good ``last.pt`` is, as the end of a sentence for messages."""
        if self._good is None:
            return "no good checkpoint was written"
        return f"the last good checkpoint is {self._good[0]} (step {self._good[1]})"

    def _checkpoint_bytes(self) -> bytes | None:
        """The serialised checkpoint (every process takes part in gathering it), on the
        main process; None elsewhere, and when a tensor of it is not finite."""
        payload = self._payload()
        if not self.context.is_main:
            return None
        bad = nonfinite_tensors(
            {k: payload[k] for k in ("model", "optimizer", "task") if k in payload})
        if bad:
            self._event("warning", f"warning: no checkpoint written at step {self.state.step}: "
                        f"{len(bad)} tensor(s) hold NaN or inf ({bad[0]}, ...); "
                        f"{self.good_checkpoint()}")
            return None
        return serialize_checkpoint(payload)

    def save(self, path: Path) -> bool:
        """Write a checkpoint (every process takes part; only the main one writes);
        returns whether it was written (never with a non-finite tensor)."""
        data = self._checkpoint_bytes()
        if data is not None:
            save_checkpoint(path, data)
            if path == self.last_path:
                self._good = (path, self.state.step)
        return self.context.broadcast_flag(data is not None)  # the main process's, everywhere

    def _save_last(self, best: bool = False) -> bool:
        """``last.pt`` (and the same bytes as ``best.pt`` when ``best``); False when the
        state is not finite and nothing was written."""
        data = self._checkpoint_bytes()
        if data is not None:
            save_checkpoint(self.last_path, data)
            self._good = (self.last_path, self.state.step)
            if best:
                save_checkpoint(self.best_path, data)
        self._saved_step = self.state.step
        return self.context.broadcast_flag(data is not None)  # the main process's, everywhere

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Continue from a checkpoint of the same run (model, optimiser, counters, RNG).

        Raises:
            CheckpointError: the checkpoint's model or optimiser does not fit this one.
        """
        try:
            self.model.load_state_dict(checkpoint["model"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(
                "--resume: the checkpoint does not fit this model: "
                f"{str(e).strip().splitlines()[0]}") from None
        for group in self.optimizer.param_groups:  # the checkpoint's lr, not the config's
            group["lr"] = checkpoint["optimizer"]["param_groups"][0]["lr"]
        self.state = TrainerState(**checkpoint["trainer"])
        # the run's clock goes on from the checkpoint's (fit() sets it again) also for a
        # save() or record() without fit()
        self.records.start_clock(self.state.wall)
        self.task.load_state_dict(checkpoint["task"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        if "cuda" in checkpoint["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(checkpoint["rng"]["cuda"])
        if self.scaler is not None and "scaler" in checkpoint:
            self.scaler.load_state_dict(checkpoint["scaler"])
        self._good = (self.last_path, self.state.step)

    def set_lr(self, lr: float) -> None:
        """Set the learning rate (e.g. a ``train.lr`` override on resume)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    # -- the loop ------------------------------------------------------------------------

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _autocast(self) -> Any:
        precision = self.config.run.precision  # not fp32 only on CUDA (checked at init)
        if precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast("cuda", dtype=dtype)

    def _step(self) -> tuple[bool, float, dict[str, Any]]:
        """One optimiser step; returns (accepted, loss, stats)."""
        self.model.train()
        with self._autocast():
            loss, stats = self.task.train_loss(self.wrapped, self.state.step)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        # Under DDP, backward has already averaged the gradients over the processes, so
        # every process clips the same (whole-batch) gradient and takes the same step.
        norm = clip_gradients(self.model.parameters(), self.train_cfg.clip)
        finite = bool(torch.isfinite(loss.detach()).item()) and (
            self.scaler is not None or bool(torch.isfinite(norm).item())
        )
        finite = bool(self.context.all_reduce_sum(
            torch.tensor([float(not finite)], device=self.context.device)).item() == 0)
        if finite:
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
            else:
                self.optimizer.step()
        if self.scaler is not None:
            self.scaler.update()  # after a skipped step too: the next unscale_ needs it
        self.task.end_step(finite)
        stats["grad_norm"] = float(norm)  # before clipping
        return finite, float(loss.detach()), stats

    def _evaluate(self, split: str) -> dict[str, Any]:
        with seeded_rng(self.train_cfg.seed, self.context.device):  # never moves training's
            return self.task.evaluate(split)

    def _after_eval(self, valid: dict[str, Any]) -> str | None:
        """Checkpoints, learning-rate drop and early stop; returns a stop reason.

        ``last.pt`` (and ``best.pt`` when the loss is the best yet) are written after the
        schedule has moved, unless the validation loss is not finite: then none is.
        """
        loss = float(valid["loss"])
        stop = self._schedule(loss)
        self._checkpoint_after(loss)
        return stop

    def _checkpoint_after(self, loss: float) -> None:
        if not math.isfinite(loss):
            self._event("warning", f"warning: the validation loss at step {self.state.step} is "
                        f"not finite: no checkpoint written; {self.good_checkpoint()}")
            self._saved_step = self.state.step
            return
        previous = self.state.best_saved
        best = loss < previous
        if best:
            self.state.best_saved = loss
        if not self._save_last(best=best):
            self.state.best_saved = previous

    def _schedule(self, loss: float) -> str | None:
        if loss < self.state.best_valid:
            self.state.best_valid = loss
            self.state.bad_evals = 0
            return None
        self.state.bad_evals += 1
        if self.state.bad_evals < self.train_cfg.patience:
            return None
        if self.state.lr_drops >= self.train_cfg.max_lr_drops:
            return "early_stop"
        for group in self.optimizer.param_groups:
            group["lr"] = group["lr"] / self.train_cfg.lr_decay
        self.state.lr_drops += 1
        self.state.bad_evals = 0
        self._event("lr_drop", f"validation stopped improving: learning rate divided by "
                    f"{self.train_cfg.lr_decay:g} to {self.lr:.3g}", lr=self.lr)
        return None

    def _budget_reason(self) -> str | None:
        cfg = self.train_cfg
        if cfg.max_steps and self.state.step >= cfg.max_steps:
            return "max_steps"
        if cfg.max_epochs and self.state.step >= cfg.max_epochs * self.task.steps_per_epoch:
            return "max_epochs"
        # each process times itself: the main process's clock decides for all, so that no
        # process stops a step before the others and leaves them in a collective
        if cfg.max_minutes and self.context.broadcast_flag(
                self.state.elapsed >= cfg.max_minutes * 60):
            return "max_minutes"
        return None

    @contextmanager
    def _signals(self) -> Iterator[None]:
        """Ctrl-C / SIGTERM finish the current step, then the loop checkpoints and stops."""

        def handler(signum: int, _frame: Any) -> None:
            if self._signal is not None or self._interrupt_now:  # stop at once
                self._signal = signum
                raise KeyboardInterrupt
            self._signal = signum
            self.echo(f"\n{signal.Signals(signum).name} received: finishing this step, "
                      "then writing a checkpoint")

        try:
            previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread: no handlers
            yield
            return
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def fit(self) -> FitResult:
        """Train until a budget, early stop or signal; leaves the newest good ``last.pt``.

        Raises:
            TrainingError: too many non-finite steps in a row.
            OSError: a checkpoint or log cannot be written (the earlier checkpoints stay).
        """
        self.records.start_clock(self.state.wall)
        if self.context.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.out_dir)
            write_config(self.out_dir, self.config)
            if not self.records.open(keep_until=self.state.step) and self.config.run.tensorboard:
                self.echo(TENSORBOARD_MISSING)
            if self.state.step:
                self._event("resume", f"resumed at step {self.state.step}", echo=False)
        try:
            with gpu_training(self.task.graph_stacks, self.config.run, self.context) as gpu:
                return self._fit(gpu)
        finally:
            self.records.close()

    def _fit(self, gpu: GpuTraining) -> FitResult:
        cfg = self.train_cfg
        self.context.decorrelate_rng()  # after restore(): sampled boundaries differ by rank
        bar = self._progress()
        valid: dict[str, Any] | None = None
        consecutive_bad = 0
        stopped_by = self._budget_reason()
        self._saved_step = -1
        rate = SymbolRate()
        since = (self.state.step, self.state.elapsed)  # this session's start, for its speed
        last_line: float | None = None  # when the last plain progress line was printed
        try:
            with self._signals():
                while stopped_by is None:
                    hooked = self.task.on_step(self.state.step / self.task.steps_per_epoch)
                    start = time.perf_counter()
                    ok, loss, stats = self._step()
                    self.state.elapsed += time.perf_counter() - start
                    rate.add(self.task.symbols_per_step, time.perf_counter() - start)
                    self.state.step += 1
                    if self.state.step == since[0] + 1 and (line := gpu.report()):
                        self._event("cuda_graph", line, echo=gpu.off is None)
                    if ok:
                        consecutive_bad = 0
                    else:
                        consecutive_bad += 1
                        self.state.nonfinite_total += 1
                        self._event("nonfinite_step", f"step {self.state.step}: non-finite loss "
                                    f"or gradient, step skipped ({consecutive_bad} in a row)")
                        if consecutive_bad >= cfg.max_nonfinite:
                            raise TrainingError(
                                f"stopped: {consecutive_bad} steps in a row had a non-finite "
                                f"loss or gradient (last at step {self.state.step}); "
                                f"{self.good_checkpoint()}; try a lower "
                                "train.lr"
                            )
                    shown = {"loss": loss, **stats, "lr": self.lr, "chars/s": rate.value,
                             **hooked}
                    bar.total = self._planned_steps()
                    bar.update(1)
                    bar.set_postfix_str(format_metrics(shown), refresh=False)
                    if self.state.step % cfg.log_every == 0:
                        self.record("train", shown)
                        if bar.disable and (last_line is None
                                            or time.monotonic() - last_line >= PLAIN_LOG_SECONDS):
                            self.echo(plain_line(
                                shown, step=self.state.step, total=bar.total, since=since,
                                elapsed=self.state.elapsed, wall=self.records.wall()))
                            last_line = time.monotonic()
                    stopped_by = self._budget_reason()
                    if self.state.step % cfg.eval_every == 0:
                        valid = self._evaluate("valid")
                        self._log_eval("valid", valid)
                        stopped_by = self._after_eval(valid) or stopped_by
                    requested = self.context.broadcast_flag(self._signal is not None)
                    if requested and stopped_by is None:
                        stopped_by = "signal"
        finally:
            bar.close()
        if stopped_by == "signal" or self._saved_step == self.state.step:
            if self._saved_step != self.state.step:
                self._save_last()
        else:
            stopped_by, valid = self._final_validation(stopped_by)
        self._event("stop", f"stopped after step {self.state.step} ({stopped_by})", echo=False,
                    reason=stopped_by)
        return FitResult(
            stopped_by, self.state.step, self.state.best_saved,
            self._good[0] if self._good is not None else None,
            self.best_path if self.best_path.exists() else None, valid,
        )

    def _final_validation(self, stopped_by: str) -> tuple[str, dict[str, Any] | None]:
        """Off the schedule: write ``last.pt`` first, then validate (a signal interrupts at
        once, and ``last.pt`` is there); the result only moves ``best.pt``. A non-finite
        validation loss puts the previous ``last.pt`` back."""
        backup = None
        previous = self._good
        if self.context.is_main and self.last_path.exists():
            backup = temporary_name(self.last_path, ".prev")
            try:
                os.link(self.last_path, backup)
            except OSError:
                backup = None
        try:
            written = self._save_last()
            try:
                self._interrupt_now = True
                with self._signals():
                    valid = self._evaluate("valid")
            except KeyboardInterrupt:
                self.echo("interrupted during the final validation; last.pt holds step "
                          f"{self.state.step}")
                return "signal", None
            finally:
                self._interrupt_now = False
            self._log_eval("valid", valid)
            loss = float(valid["loss"])
            if not math.isfinite(loss):
                if written and self.context.is_main:
                    if backup is not None:
                        os.replace(backup, self.last_path)
                        backup = None
                    else:
                        self.last_path.unlink(missing_ok=True)
                    self._good = previous
                self._event("warning", f"warning: the validation loss at step "
                            f"{self.state.step} is not finite: last.pt not updated; "
                            f"{self.good_checkpoint()}")
            elif written and loss < self.state.best_saved:
                self.state.best_saved = loss
                self._save_last(best=True)
            return stopped_by, valid
        finally:
            if backup is not None:
                backup.unlink(missing_ok=True)

    def _log_eval(self, split: str, metrics: dict[str, Any]) -> None:
        self.record(split, metrics)
        self.echo(f"step {self.state.step} {split}: {format_metrics(metrics)}")
        for warning in self.task.warnings(metrics):
            self._event("warning", f"warning: {warning}")

    def record(self, kind: str, metrics: dict[str, Any]) -> None:
        """Append ``metrics`` of ``kind`` at the current step to the run's ``metrics.jsonl``
        (and TensorBoard), on the main process: the trainer's own ``train`` and ``valid``
        records, and an evaluation made after :meth:`fit`, e.g. the report's ``test``."""
        self.records.record(kind, self.state.step, metrics)

    def _event(self, name: str, message: str, *, echo: bool = True, **values: Any) -> None:
        self.records.event(name, self.state.step, message, echo=echo, **values)

    def _planned_steps(self) -> int | None:
        """The step at which the first budget runs out (:func:`.pace.planned_steps`)."""
        return planned_steps(self.train_cfg, self.state.step, self.state.elapsed,
                             self.task.steps_per_epoch)

    def _progress(self) -> Any:
        """The training bar (:func:`hmrnn.progress.progress_bar`; drawn on the main process
        only, with ``run.progress`` on and stderr a terminal)."""
        return progress_bar(total=self._planned_steps(), desc="train", unit="step",
                            enabled=self.config.run.progress and self.context.is_main,
                            initial=self.state.step, mininterval=1.0)

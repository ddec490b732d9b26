"""One training run from the command line, for any task: the part ``hmrnn train`` and
``hmrnn handwriting train`` share.

Config (file, overrides, or the checkpoint's when resuming; validated as a whole), the
process group, the run folder (a numbered new one, ``--overwrite`` or ``--resume``; locked
while the run is live), the printed resolved config, the trainer, the final report and the
exit code on a signal.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from hmrnn.training.checkpoint import CheckpointError, load_checkpoint
from hmrnn.training.config import (
    Config,
    ConfigError,
    apply_overrides,
    check_resume_overrides,
    load_config,
    parse_overrides,
    validate_config,
)
from hmrnn.training.distributed import DistContext, setup, teardown
from hmrnn.training.run_dir import RunLock, choose_run_dir, clear_run, holds_run
from hmrnn.training.task import Task
from hmrnn.training.trainer import Trainer

Say = Callable[..., None]
MakeTask = Callable[[Config, "dict[str, Any] | None", DistContext, Say], Task]
Report = Callable[[Trainer, Task, Say], None]

EXIT_INTERRUPTED = 130


def _print(*args: Any) -> None:
    print(*args, flush=True)


def run_training(
    config_name: str | None,
    override_args: list[str],
    *,
    kind: str,
    resume: bool,
    make_task: MakeTask,
    report: Report | None,
    adjust_config: Callable[[Config], Config] = lambda c: c,
    overwrite: bool = False,
    print_config: bool = False,
) -> int:
    """Train ``kind`` as configured; returns the process exit code.

    Args:
        config_name: a config name or path (``--config``), or None for the defaults.
        override_args: ``section.field=value`` strings, applied last (also on resume, where
            one that changes a field fixed on resume is refused and ``train.lr`` replaces
            the checkpoint's learning rate).
        kind: the task kind a resumed checkpoint must hold.
        resume: continue ``run.out_dir/last.pt``.
        make_task: builds the model and task from the resolved config and the checkpoint
            being resumed (or None); it may print through the given ``say``.
        report: called after training (unless stopped by a signal), e.g. test scores.
        adjust_config: a last change to the resolved config (e.g. a data path).
        overwrite: replace the run already in ``run.out_dir`` (else a new run there goes
            to a numbered sibling folder, see :mod:`hmrnn.training.run_dir`).
        print_config: print the resolved, validated config as TOML and return 0 without
            training (nor touching the run folder).
    """
    import torch

    if resume and overwrite:
        raise ConfigError("--resume continues the run in run.out_dir and --overwrite replaces "
                          "it: give one of them")
    overrides = parse_overrides(override_args)
    config = load_config(config_name, overrides)
    checkpoint = None
    saved: Config | None = None
    last = Path(config.run.out_dir) / "last.pt"
    if resume:
        if not last.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {last} to continue from")
        checkpoint = load_checkpoint(last)
        if checkpoint.get("kind") != kind:
            raise CheckpointError(
                f"--resume: {last} holds a {checkpoint.get('kind')!r} model, not {kind!r}")
        saved = Config.from_dict(checkpoint["config"])
        config = apply_overrides(saved, overrides)
        check_resume_overrides(saved, config, overrides)
    config = validate_config(adjust_config(config))
    if print_config:
        _print(config.to_toml().rstrip("\n"))
        return 0
    context = setup(config.run.device, config.run.backend)
    say: Say = _print if context.is_main else (lambda *a: None)
    lock: RunLock | None = None
    try:
        if config.run.precision != "fp32" and context.device.type != "cuda":
            raise ValueError(
                f"run.precision={config.run.precision} needs a CUDA device (mixed precision is "
                f"only used on CUDA), but this run is on {context.device}; use run.precision=fp32")
        if context.is_main:
            out = choose_run_dir(config.run.out_dir, resume=resume, overwrite=overwrite)
            if out != Path(config.run.out_dir):
                say(f"note: {config.run.out_dir} holds an earlier run: this one writes to {out} "
                    "(--resume continues the earlier run, --overwrite replaces it)")
                config = apply_overrides(config, {"run.out_dir": str(out)})
        if config.run.threads:
            torch.set_num_threads(config.run.threads)
        say("# resolved config" + (f" (resuming {last})" if checkpoint else ""))
        say(config.to_toml())
        torch.manual_seed(config.train.seed)
        task = make_task(config, checkpoint, context, say)
        trainer = Trainer(task, config, context, echo=say)
        if checkpoint is not None:
            trainer.restore(checkpoint)
            if saved is not None and "train.lr" in overrides and config.train.lr != saved.train.lr:
                say(f"train.lr={config.train.lr:g} replaces the checkpoint's learning rate "
                    f"{trainer.lr:.3g}")
                trainer.set_lr(config.train.lr)
        if context.is_main:
            lock = RunLock(config.run.out_dir)
            if overwrite and holds_run(Path(config.run.out_dir)):
                clear_run(Path(config.run.out_dir))
                say(f"note: --overwrite: the earlier run in {config.run.out_dir} was removed")
        result = trainer.fit()
        say(f"stopped after step {result.step} ({result.stopped_by}); "
            f"best valid loss {result.best_valid:.4f}")
        if result.stopped_by == "signal":
            if result.last_checkpoint is not None:
                say(f"interrupted: checkpoint written to {result.last_checkpoint}; "
                    "continue with --resume")
            else:
                say("interrupted: no good checkpoint to write (the model is not finite)")
            return EXIT_INTERRUPTED
        if report is not None:
            report(trainer, task, say)
        return 0
    finally:
        if lock is not None:
            lock.release()
        teardown(context)

"""One training run from the command line, for any task: the part ``hmrnn train`` and
``hmrnn handwriting train`` share.

Config (file, overrides, or the checkpoint's when resuming), the process group, the
printed resolved config, the trainer, the final report and the exit code on a signal.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from hmrnn.training.checkpoint import CheckpointError, load_checkpoint
from hmrnn.training.config import Config, apply_overrides, load_config, parse_overrides
from hmrnn.training.distributed import DistContext, setup, teardown
from hmrnn.training.trainer import Task, Trainer

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
) -> int:
    """Train ``kind`` as configured; returns the process exit code.

    Args:
        config_name: a config name or path (``--config``), or None for the defaults.
        override_args: ``section.field=value`` strings, applied last (also on resume).
        kind: the task kind a resumed checkpoint must hold.
        resume: continue ``run.out_dir/last.pt``.
        make_task: builds the model and task from the resolved config and the checkpoint
            being resumed (or None); it may print through the given ``say``.
        report: called after training (unless stopped by a signal), e.g. test scores.
        adjust_config: a last change to the resolved config (e.g. a data path).
    """
    import torch

    overrides = parse_overrides(override_args)
    config = load_config(config_name, overrides)
    checkpoint = None
    last = Path(config.run.out_dir) / "last.pt"
    if resume:
        if not last.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {last} to continue from")
        checkpoint = load_checkpoint(last)
        if checkpoint.get("kind") != kind:
            raise CheckpointError(
                f"--resume: {last} holds a {checkpoint.get('kind')!r} model, not {kind!r}")
        config = apply_overrides(Config.from_dict(checkpoint["config"]), overrides)
    config = adjust_config(config)
    context = setup(config.run.device, config.run.backend)
    say: Say = _print if context.is_main else (lambda *a: None)
    try:
        if config.run.threads:
            torch.set_num_threads(config.run.threads)
        say("# resolved config" + (f" (resuming {last})" if checkpoint else ""))
        say(config.to_toml())
        torch.manual_seed(config.train.seed)
        task = make_task(config, checkpoint, context, say)
        trainer = Trainer(task, config, context, echo=say)
        if checkpoint is not None:
            trainer.restore(checkpoint)
        result = trainer.fit()
        say(f"stopped after step {result.step} ({result.stopped_by}); "
            f"best valid loss {result.best_valid:.4f}")
        if result.stopped_by == "signal":
            say(f"interrupted: checkpoint written to {result.last_checkpoint}; "
                "continue with --resume")
            return EXIT_INTERRUPTED
        if report is not None:
            report(trainer, task, say)
        return 0
    finally:
        teardown(context)

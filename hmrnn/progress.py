"""Progress bars for long work, one rule for all of them (training, evaluation, ``inspect``,
``bench``, downloads): a tqdm bar on stderr with a total, so that it shows an ETA, drawn
only when it is wanted and stderr is a terminal (tqdm's ``disable=None``), so that logs
and pipes get no carriage-return lines. Lines written while a bar is drawn go through
:func:`around_bars`, so that they are never glued onto the bar.

Every layer may use this module; it imports nothing of hmrnn.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tqdm.auto import tqdm


def progress_bar(
    *, total: float | None, desc: str, unit: str = "it", enabled: bool = True, **options: Any
) -> Any:
    """A tqdm bar on stderr, off unless ``enabled`` and stderr is a terminal.

    A disabled bar takes the same calls and does nothing; its ``disable`` attribute is then
    true (callers print plain lines instead where they matter).

    Args:
        total: what a finished run counts (steps, characters, bytes...), for the ETA; None
            where it is not known (the bar then shows a count and a rate only).
        desc: the bar's label.
        unit: what one count is.
        enabled: False turns the bar off (e.g. ``run.progress=false``).
        options: further tqdm options (``leave``, ``unit_scale``, ``initial``,
            ``mininterval``, ...).
    """
    return tqdm(total=total, desc=desc, unit=unit, disable=None if enabled else True,
                **{"dynamic_ncols": True, **options})


def around_bars(echo: Callable[[str], None]) -> Callable[[str], None]:
    """``echo`` made to clear the bars on the terminal before it writes and to redraw them
    after, so that a line never lands on the end of a bar."""

    def write(message: str) -> None:
        with tqdm.external_write_mode():
            echo(message)

    return write


def duration(seconds: float) -> str:
    """``seconds`` as a bar shows a time: ``04:05``, ``1:02:03``."""
    return str(tqdm.format_interval(seconds))

"""Per-run metric logs: one JSON object per line, and TensorBoard when it is installed."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from hmrnn._io import atomic_write

# TensorBoard tags of the metrics.jsonl keys that are terse (z) or hold a slash, which
# TensorBoard would read as one more level of its tag groups (chars/s); the others are
# tagged as they are.
TAGS = {"z": "boundary_rate", "chars/s": "chars_per_s"}


class MetricsWriter:
    """Append metrics to ``out_dir/metrics.jsonl`` (and TensorBoard event files if available).

    Each record is ``{"kind": ..., "step": int, "time": unix seconds, "wall": seconds since
    the run started, ...}``: ``kind`` is ``"train"``, ``"valid"`` or ``"test"`` for metrics
    (:meth:`write`; a value is a number or a list of numbers, one per layer) and
    ``"event"`` for what happened (:meth:`event`: ``"event"`` names it, ``"message"`` says
    it in words). TensorBoard gets the numbers as ``kind/name`` scalars, a list as
    ``kind/name/layer1``, ``kind/name/layer2``, ... (``z`` is named ``boundary_rate``).

    Args:
        tensorboard: also write TensorBoard events, if ``tensorboard`` is installed
            (:attr:`tensorboard` says whether it is).
        keep_until: drop the records of an existing file after this step first, and the
            TensorBoard events after it (a resumed run replays the steps after its
            checkpoint; 0 starts the file afresh).
    """

    def __init__(self, out_dir: str | Path, *, tensorboard: bool = True,
                 keep_until: int | None = None) -> None:
        self.path = Path(out_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if keep_until is not None and self.path.exists():
            _truncate(self.path, keep_until)
        self._file = self.path.open("a", encoding="utf-8")
        self._tb: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional: the caller may say so
                pass
            else:
                self._tb = SummaryWriter(
                    str(Path(out_dir) / "tensorboard"),
                    purge_step=None if keep_until is None else keep_until + 1)

    @property
    def tensorboard(self) -> bool:
        """Whether TensorBoard events are written."""
        return self._tb is not None

    def write(self, kind: str, step: int, values: dict[str, Any], *, wall: float) -> None:
        """A record of metrics ``values`` of ``kind`` at ``step``, ``wall`` seconds into the run."""
        self._append({"kind": kind, "step": step, **_clock(wall), **values})
        if self._tb is not None:
            for name, value in values.items():
                items = value if isinstance(value, list | tuple) else [value]
                for i, v in enumerate(items):
                    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                        tag = f"{kind}/{TAGS.get(name, name)}"
                        if isinstance(value, list | tuple):
                            tag += f"/layer{i + 1}"
                        self._tb.add_scalar(tag, v, step)

    def event(self, name: str, step: int, message: str, *, wall: float,
              **values: Any) -> None:
        """A record of event ``name`` (``"resume"``, ``"lr_drop"``, ``"warning"``...) at
        ``step``, said in ``message``, with numbers ``values`` (e.g. the new ``lr``)."""
        self._append({"kind": "event", "step": step, **_clock(wall), "event": name,
                      "message": message, **values})
        if self._tb is not None:
            self._tb.add_text(f"event/{name}", message, step)

    def _append(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, default=_jsonable) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _clock(wall: float) -> dict[str, float]:
    return {"time": round(time.time(), 3), "wall": round(wall, 3)}


def _truncate(path: Path, step: int) -> None:
    """Keep the records of ``path`` up to ``step`` (and drop a torn last line), atomically."""
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if line.endswith("\n") and isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line)
    with atomic_write(path) as f:
        f.write("".join(kept).encode("utf-8"))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)

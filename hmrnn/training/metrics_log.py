"""Per-run metric logs: one JSON object per line, and TensorBoard when it is installed."""

from __future__ import annotations

import json
import math
import os
import secrets
from pathlib import Path
from typing import Any


class MetricsWriter:
    """Append metrics to ``out_dir/metrics.jsonl`` (and TensorBoard event files if available).

    Each record is ``{"kind": "train" | "valid" | "test" | ..., "step": int, ...values}``.
    Lists of numbers (e.g. one boundary rate per layer) are kept as lists in JSON and
    written as ``name/0``, ``name/1`` ... scalars to TensorBoard.

    Args:
        keep_until: drop the records of an existing file after this step first (a resumed
            run replays the steps after its checkpoint; 0 starts the file afresh).
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
            except ImportError:  # tensorboard is optional
                self._tb = None
            else:
                self._tb = SummaryWriter(str(Path(out_dir) / "tensorboard"))

    def write(self, kind: str, step: int, values: dict[str, Any]) -> None:
        record = {"kind": kind, "step": step, **values}
        self._file.write(json.dumps(record, default=_jsonable) + "\n")
        self._file.flush()
        if self._tb is not None:
            for name, value in values.items():
                items = value if isinstance(value, list | tuple) else [value]
                for i, v in enumerate(items):
                    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                        tag = f"{kind}/{name}" + (f"/{i}" if len(items) > 1 else "")
                        self._tb.add_scalar(tag, v, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


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
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)

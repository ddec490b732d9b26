"""The README's Python example runs and prints what it says."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has a python example"
    out = io.StringIO()
    namespace: dict = {}
    with contextlib.redirect_stdout(out):
        exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert "torch.Size([100, 8, 128])" in out.getvalue()
    assert "torch.Size([100, 8, 3])" in out.getvalue()
    assert tuple(namespace["embedding"].shape) == (100, 8, 512)


def test_readme_top_commands_match_ci() -> None:
    lines = README.read_text().splitlines()
    fence = lines.index("```bash")
    commands = [line.split("#")[0].strip() for line in lines[fence + 1 : fence + 3]]
    assert commands[0].endswith("hmrnn train")
    ci = (README.parent / ".ci" / "run").read_text()
    assert commands[1] in ci

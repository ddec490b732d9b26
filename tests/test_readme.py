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


def test_readme_loading_example_runs(tmp_path: Path) -> None:
    from hmrnn.cli import main

    run = tmp_path / "run"
    assert main(["train", "--no-report", f"run.out_dir={run}", "data.synthetic_chars=20000",
                 "model.hidden_size=8", "model.embedding_size=4", "model.output_size=8",
                 "train.max_steps=4", "train.eval_every=4", "train.max_minutes=0",
                 "train.batch_size=4", "train.seq_len=10", "run.progress=false"]) == 0
    block = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)[1]
    assert '"runs/default"' in block
    namespace: dict = {}
    with contextlib.redirect_stdout(io.StringIO()) as out:
        exec(compile(block.replace('"runs/default"', repr(str(run))), "README.md", "exec"),
             namespace)
    assert len(out.getvalue()) == 80 + 1  # the 80 characters, and print's newline
    assert namespace["z"].shape == (len("the red dog sees the cats."), 3)

"""The command line end to end on a tiny corpus, and every bad input as one clear line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import error_line

from hmrnn.cli import main

TINY = ["model.hidden_size=8,7,6", "model.embedding_size=6", "model.output_size=12",
        "train.batch_size=4", "train.seq_len=10", "train.eval_batch_size=8",
        "run.progress=false", "run.tensorboard=false", "train.max_minutes=0"]


def _corpus(tmp_path: Path, words: int = 700) -> Path:
    rng = np.random.default_rng(0)
    vocab = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran"]
    lines = [" ".join(vocab[i] for i in rng.integers(0, 8, size=7)) for _ in range(words // 7)]
    path = tmp_path / "corpus.txt"
    lines.insert(0, 'a <cat> & the "mat"')  # characters the HTML page must escape
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("cli")
    corpus = _corpus(tmp)
    out = tmp / "run"
    assert main(["train", f"data.corpus={corpus}", f"run.out_dir={out}", "train.max_steps=12",
                 "train.eval_every=6", *TINY]) == 0
    return out


def test_train_writes_checkpoints_and_metrics(trained: Path) -> None:
    assert (trained / "best.pt").is_file() and (trained / "last.pt").is_file()
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in records if r["kind"] == "valid"]
    assert [r["step"] for r in valid] == [6, 12]
    assert all(r["bpc"] > 0 and len(r["z"]) == 2 for r in valid)


def test_eval_prints_bpc_and_boundary_scores(trained: Path, capsys) -> None:
    assert main(["eval", str(trained), "--split", "valid", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert 0 < report["bpc"] < 10 and report["chars"] > 0
    assert set(report["segmentation"]["layers"]) == {"layer1", "layer2"}
    assert report["computation"]["stacked_rnn_updates"] == 3 * report["chars"]
    assert 0 <= report["computation"]["saved_fraction"] < 1


def test_eval_device(trained: Path, capsys) -> None:
    """``--device cpu`` scores as the default does here; a GPU asked for where there is none
    is one clear line (exit 2)."""
    assert main(["eval", str(trained), "--split", "valid", "--json", "--device", "cpu"]) == 0
    on_cpu = json.loads(capsys.readouterr().out)
    assert main(["eval", str(trained), "--split", "valid", "--json"]) == 0
    auto = json.loads(capsys.readouterr().out)
    if not torch.cuda.is_available():
        assert auto == on_cpu
        assert main(["eval", str(trained), "--device", "cuda"]) == 2
        assert "--device=cuda was asked for, but CUDA is not available here" in \
            capsys.readouterr().err
    else:  # the GPU's float rounding, and its graphs' replays
        assert abs(auto["bpc"] - on_cpu["bpc"]) < 1e-4


def test_eval_on_a_file_and_sample(trained: Path, tmp_path: Path, capsys) -> None:
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat\n")
    assert main(["eval", str(trained / "best.pt"), "--file", str(text)]) == 0
    assert "bits per character over 22 characters" in capsys.readouterr().out
    assert main(["sample", str(trained), "--length", "40", "--prime", "the ", "--seed", "1"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("the ") and len(first) == 4 + 40 + 1
    assert main(["sample", str(trained), "--length", "40", "--prime", "the ", "--seed", "1"]) == 0
    assert capsys.readouterr().out == first


def test_resume_continues_the_run(trained: Path, tmp_path: Path, capsys) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    corpus = _corpus(tmp_path)
    assert main(["train", "--resume", f"data.corpus={corpus}", f"run.out_dir={run}",
                 "train.max_steps=14", "--no-report", *TINY]) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "stopped after step 14" in out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        (b"", "empty"),
        (b"abc\x00\x01\x02" * 50, "binary"),
        (b"the cat sat\n" * 3, "too short"),
    ],
)
def test_bad_training_data(tmp_path: Path, capsys, content: bytes | None, message: str) -> None:
    path = tmp_path / "data.txt"
    if content is not None:
        path.write_bytes(content)
    code = main(["train", f"data.corpus={path}", f"run.out_dir={tmp_path / 'r'}", *TINY])
    assert code == 2
    assert message in error_line(capsys)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train.lrr=0.1"], "did you mean train.lr?"),
        (["train.lr=fast"], "train.lr expects float"),
        (["model.rnn=gru"], "model.rnn must be one of"),
        (["model.boundary=bernoulli"], "boundary must be one of"),
        (["--config", "nope"], "no config named 'nope'"),
        (["--resume"], "no checkpoint at"),
    ],
)
def test_bad_config(tmp_path: Path, capsys, args: list[str], message: str) -> None:
    corpus = _corpus(tmp_path)
    code = main(["train", f"data.corpus={corpus}", f"run.out_dir={tmp_path / 'r'}", *TINY, *args])
    assert code == 2
    assert message in error_line(capsys)


def test_unknown_characters_are_named(trained: Path, tmp_path: Path, capsys) -> None:
    text = tmp_path / "t.txt"
    text.write_text("the cat\nsat Zed")
    assert main(["eval", str(trained), "--file", str(text)]) == 2
    assert "character 'Z' at position 12" in error_line(capsys)
    assert main(["sample", str(trained), "--prime", "the q"]) == 2
    assert "character 'q' at position 4" in error_line(capsys)


def test_bad_checkpoints(trained: Path, tmp_path: Path, capsys) -> None:
    data = (trained / "last.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 3])
    assert main(["eval", str(tmp_path / "cut.pt")]) == 2
    assert "truncated or corrupt" in error_line(capsys)
    (tmp_path / "junk.pt").write_bytes(os.urandom(2000))
    assert main(["sample", str(tmp_path / "junk.pt")]) == 2
    assert "truncated or corrupt" in error_line(capsys)
    import torch

    checkpoint = torch.load(trained / "last.pt", weights_only=True)
    checkpoint["version"] = 0
    torch.save(checkpoint, tmp_path / "old.pt")
    assert main(["eval", str(tmp_path / "old.pt")]) == 2
    assert "format version 0" in error_line(capsys)
    checkpoint["version"] = 1
    checkpoint["model"].pop("head.bias")
    torch.save(checkpoint, tmp_path / "mismatch.pt")
    assert main(["eval", str(tmp_path / "mismatch.pt")]) == 2
    assert "does not match" in error_line(capsys)


def test_sigterm_checkpoints_and_exits(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path, words=4000)
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hmrnn", "train", f"data.corpus={corpus}", f"run.out_dir={out}",
         "train.eval_every=100000", "--no-report", *TINY],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.time() + 180  # a loaded machine may take a while to start
    metrics = out / "metrics.jsonl"
    try:
        while not metrics.exists() or "train" not in metrics.read_text():
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()  # never wait on a run that nobody will stop
                pytest.fail(f"no training record before the deadline: {proc.communicate()}")
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr
    assert "SIGTERM received" in stdout and "continue with --resume" in stdout
    from hmrnn.training.checkpoint import load_checkpoint

    assert load_checkpoint(out / "last.pt")["trainer"]["step"] >= 20


def test_inspect_writes_figures_page_and_summary(trained: Path, tmp_path: Path, capsys) -> None:
    import html.parser

    text = "the cat <sat> & on the mat\nthe dog"
    out = tmp_path / "inspect"
    assert main(["inspect", str(trained), "--text", text, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "layer updates:" in printed and "standard stacked RNN" in printed
    for name in ("boundary_map.png", "hidden_norms.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "segments.html").read_text()
    html.parser.HTMLParser().feed(page)
    assert ">&lt;<" in page and ">&gt;<" in page and ">&amp;<" in page and "<sat>" not in page
    summary = json.loads((out / "summary.json").read_text())
    for layer in summary["operation_counts"]:
        assert layer["update"] + layer["copy"] + layer["flush"] == len(text)
    assert summary["operation_counts"][0]["copy"] == 0
    assert summary["operation_counts"][-1]["flush"] == 0
    assert main(["inspect", str(trained), "--synthetic", "120", "--out", str(out)]) == 2
    assert "not in the vocabulary" in error_line(capsys)


def test_data_describe_and_verify(tmp_path: Path, capsys) -> None:
    corpus = _corpus(tmp_path)
    assert main(["data", "describe", str(corpus)]) == 0
    out = capsys.readouterr().out
    assert "vocabulary:" in out and "train:" in out
    assert main(["data", "verify", "ptb", "--data-dir", str(tmp_path)]) == 2
    assert "ptb failed verification" in error_line(capsys)
    assert main(["data", "describe", "nosuchcorpus"]) == 2
    assert "unknown corpus" in error_line(capsys)

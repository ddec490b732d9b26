"""``hmrnn plot``: a run's training curves from its metrics.jsonl, and bad input as one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import error_line

from hmrnn.analysis.curves import plot_curves, read_metrics
from hmrnn.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _records() -> list[dict]:
    records = []
    for step in range(10, 61, 10):
        records.append({"kind": "train", "step": step, "loss": 3.0 - step / 40,
                        "bpc": (3.0 - step / 40) / 0.693, "z": [0.3 - step / 600, 0.1],
                        "dead0": [0.0, 0.1], "dead1": [0.0, 0.02],
                        "zgrad": [0.3 / step, 0.01 / step], "grad_norm": 1.0 + step / 100,
                        "lr": 0.002 if step < 40 else 0.001, "chars/s": 5000.0,
                        "slope": 1.0 + step / 1000})
        if step % 20 == 0:
            records.append({"kind": "valid", "step": step, "loss": 2.9 - step / 40,
                            "bpc": (2.9 - step / 40) / 0.693, "z": [0.25, 0.08],
                            "f1_word": 0.3 + step / 200, "dead0": [0.0, 0.1],
                            "dead1": [0.0, 0.02], "zgrad": [0.3 / step, 0.01 / step]})
    records.append({"kind": "test", "step": 60, "loss": 1.4, "bpc": 2.0, "z": [0.2, 0.07]})
    return records


def _write_run(folder: Path, records: list[dict], torn: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in records)
    if torn:
        text += '{"kind": "train", "st'
    (folder / "metrics.jsonl").write_text(text)
    return folder


def test_plot_writes_png_and_pdf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _write_run(tmp_path / "run", _records())
    assert main(["plot", str(run)]) == 0
    png, pdf = run / "curves.png", run / "curves.pdf"
    assert png.read_bytes().startswith(PNG_SIGNATURE) and png.stat().st_size > 10_000
    assert pdf.read_bytes().startswith(b"%PDF") and pdf.stat().st_size > 1000
    assert "curves.png" in capsys.readouterr().out
    # --out, --format and --dpi
    out = tmp_path / "figs" / "run-curves"
    assert main(["plot", str(run / "metrics.jsonl"), "--out", str(out), "--format", "svg,png",
                 "--dpi", "60"]) == 0
    assert "<svg" in out.with_suffix(".svg").read_text()[:2000]
    assert not out.with_suffix(".pdf").exists()
    from matplotlib.image import imread

    small = imread(out.with_suffix(".png")).shape
    large = imread(png).shape
    assert small[0] < large[0] and small[1] < large[1]


def test_plot_a_real_run_shape_and_torn_line(tmp_path: Path) -> None:
    # only train records with BPC (no instruments, no validation yet), a torn last line
    records = [{"kind": "train", "step": s, "loss": 2.0, "bpc": 2.9, "z": [0.2],
                "grad_norm": 0.5, "lr": 0.002} for s in (10, 20)]
    run = _write_run(tmp_path / "run", records, torn=True)
    assert len(read_metrics(run)) == 2
    written = plot_curves(run, tmp_path / "c", formats="png")
    assert [p.name for p in written] == ["c.png"] and written[0].stat().st_size > 0
    # a task without BPC (handwriting) plots its loss
    loss_only = [{"kind": k, "step": 5, "loss": -1.5} for k in ("train", "valid")]
    assert plot_curves(loss_only, tmp_path / "l.pdf", formats=["pdf"])[0].name == "l.pdf"


def test_plot_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plot", str(tmp_path / "missing")]) == 2
    assert "does not exist" in error_line(capsys)
    assert main(["plot", str(tmp_path)]) == 2  # a folder without metrics.jsonl
    assert "no metrics.jsonl" in error_line(capsys)
    (tmp_path / "metrics.jsonl").write_text("")
    assert main(["plot", str(tmp_path)]) == 2
    assert "no metrics records" in error_line(capsys)
    (tmp_path / "metrics.jsonl").write_text("garbage\n{}\n")
    assert main(["plot", str(tmp_path)]) == 2
    assert "not JSON" in error_line(capsys)
    run = _write_run(tmp_path / "run", _records())
    assert main(["plot", str(run), "--format", "jpg"]) == 2
    assert "unknown figure format 'jpg'" in error_line(capsys)
    assert main(["plot", str(run), "--dpi", "0"]) == 2
    assert "dpi" in error_line(capsys)

"""Tests of hmrnn.analysis.figures (Figures 3 and 4) and hmrnn.analysis.report (HTML page,
inspect bundle)."""

from __future__ import annotations

import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgb

from hmrnn.analysis.boundaries import Op, operation_counts, operations, text_boundaries
from hmrnn.analysis.figures import (
    BLANK,
    MARK,
    PAGE_WIDTH_IN,
    TICK,
    boundary_map,
    display_char,
    hidden_norm_map,
)
from hmrnn.analysis.report import html_report, inspect_sequence

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEXT = 'a<b & "c" d\'e_f\ng h>i'  # T = 21: markup characters, quotes, underscore, newline


def make_boundary(text: str = TEXT) -> np.ndarray:
    """(T, 3): layer 1 at word ends, layer 2 at every other word end, top layer 0."""
    b = np.zeros((len(text), 3), dtype=np.int8)
    ends = np.flatnonzero(text_boundaries(text))
    b[ends, 0] = 1
    b[ends[1::2], 1] = 1
    return b


def make_norms(boundary: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.random(boundary.shape) + np.arange(boundary.shape[1])


def read_png_shape(path: Path) -> tuple[int, int]:
    from matplotlib.image import imread

    return imread(path).shape[:2]


def test_display_char() -> None:
    assert display_char("\n") == "\u23ce"
    assert display_char(" ") == "\u2423"
    assert display_char("_") == "_"
    assert display_char("\x00") == "\u00b7"


def _cell_bands(path: Path) -> int:
    """The number of stacked bands of cells (one per layer row per wrapped panel): runs of
    image rows mostly in the colours of a boundary map's cells."""
    from matplotlib.image import imread

    rgb = imread(path)[..., :3]
    cells = np.zeros(rgb.shape[:2], bool)
    for colour in (MARK, BLANK):
        cells |= (np.abs(rgb - np.asarray(to_rgb(colour))) < 0.03).all(axis=-1)
    rows = cells.mean(axis=1) > 0.3
    return int(np.count_nonzero(rows[1:] & ~rows[:-1]) + rows[0])


def _share(path: Path, colour: str) -> float:
    from matplotlib.image import imread

    rgb = imread(path)[..., :3]
    return float((np.abs(rgb - np.asarray(to_rgb(colour))) < 0.03).all(axis=-1).mean())


def test_boundary_map_png_svg_pdf_and_wrapping(tmp_path: Path) -> None:
    b = make_boundary()
    png = boundary_map(TEXT, b, tmp_path / "map.png", width=8)
    data = png.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
    one_panel = boundary_map(TEXT, b, tmp_path / "one.png", width=30)
    # 21 characters at width 8 wrap into 3 stacked panels of 2 layer rows, at width 30 into one
    assert _cell_bands(png) == 6 and _cell_bands(one_panel) == 2
    assert read_png_shape(png)[0] > 1.5 * read_png_shape(one_panel)[0]
    svg = boundary_map(TEXT, b, tmp_path / "map.svg", width=8)
    assert "<svg" in svg.read_text(encoding="utf-8")[:2000]
    # the format and dpi parameters; the path gets the format's suffix
    pdf = boundary_map(TEXT, b, tmp_path / "map", width=8, format="pdf")
    assert pdf == tmp_path / "map.pdf" and pdf.read_bytes().startswith(b"%PDF")
    low = boundary_map(TEXT, b, tmp_path / "low.png", width=8, dpi=50)
    assert read_png_shape(low)[0] < read_png_shape(png)[0] / 2


def test_figures_fit_a_page_and_explain_themselves(tmp_path: Path) -> None:
    text = (TEXT * 13)[:270]
    b = make_boundary(text)
    norms = make_norms(b)
    for path in (boundary_map(text, b, tmp_path / "map.png", width=90, dpi=100),
                 hidden_norm_map(text, norms, b, tmp_path / "norms.png", width=90, dpi=100)):
        height, width = read_png_shape(path)
        assert width <= PAGE_WIDTH_IN * 100 + 1, "90 characters a row fit a page's width"
    assert _cell_bands(tmp_path / "map.png") == 3 * 2  # three rows of 90
    svg = boundary_map(text, b, tmp_path / "map.svg").read_text(encoding="utf-8")
    # a title, a legend for both kinds of cell and the positions of every row
    for words in ("Boundary detectors", "boundary, layer", "no boundary", "0\u201389",
                  "180\u2013269", "space"):
        assert words in svg, words
    svg = hidden_norm_map(text, norms, b, tmp_path / "norms.svg").read_text(encoding="utf-8")
    for words in ("Hidden-state norms", "segment ends with this character", "COPYs"):
        assert words in svg, words


def test_boundary_map_marks_cells(tmp_path: Path) -> None:
    blank = boundary_map(TEXT, np.zeros((21, 3)), tmp_path / "blank.png", width=21)
    lit = np.zeros((21, 3))
    lit[:, :2] = 1
    marked = boundary_map(TEXT, lit, tmp_path / "marked.png", width=21)
    assert read_png_shape(blank) == read_png_shape(marked)
    assert _share(blank, BLANK) > 0.1, "cells where z = 0 are light"
    assert _share(marked, MARK) > 0.1, "cells where z = 1 are filled"
    assert _share(marked, BLANK) < 0.1 * _share(blank, BLANK)
    assert _share(blank, MARK) < 0.1 * _share(marked, MARK)  # the legend's swatch only


def test_hidden_norm_map(tmp_path: Path) -> None:
    b = make_boundary()
    png = hidden_norm_map(TEXT, make_norms(b), b, tmp_path / "norms.png", width=10)
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    svg = hidden_norm_map(TEXT, make_norms(b), b, tmp_path / "norms.svg", width=10)
    assert "<svg" in svg.read_text(encoding="utf-8")[:2000]
    # constant norms must not break the colour scale
    flat = hidden_norm_map(TEXT, np.ones(b.shape), b, tmp_path / "flat.png")
    assert flat.stat().st_size > 0
    # boundary ticks: more red with boundaries than without (the legend's line only)
    none = hidden_norm_map(TEXT, make_norms(b), np.zeros(b.shape), tmp_path / "none.png",
                           width=10)
    assert _share(png, TICK) > 3 * _share(none, TICK)
    pdf = hidden_norm_map(TEXT, make_norms(b), b, tmp_path / "n", format="pdf")
    assert pdf.suffix == ".pdf" and pdf.read_bytes().startswith(b"%PDF")


def test_plot_errors(tmp_path: Path) -> None:
    b = make_boundary()
    with pytest.raises(ValueError, match=r"\.png, \.pdf or \.svg"):
        boundary_map(TEXT, b, tmp_path / "map.jpg")
    with pytest.raises(ValueError, match="format must be one of png, pdf, svg"):
        boundary_map(TEXT, b, tmp_path / "map.png", format="jpg")
    with pytest.raises(ValueError, match="dpi must be"):
        hidden_norm_map(TEXT, np.ones(b.shape), b, tmp_path / "n.png", dpi=0)
    with pytest.raises(ValueError, match="20 characters but the arrays have 21 steps"):
        boundary_map(TEXT[:-1], b, tmp_path / "map.png")
    with pytest.raises(ValueError, match="at least 2 layers"):
        boundary_map(TEXT, np.zeros((21, 1)), tmp_path / "map.png")
    with pytest.raises(ValueError, match="width must be a positive int"):
        boundary_map(TEXT, b, tmp_path / "map.png", width=0)
    with pytest.raises(ValueError, match="shape of boundary"):
        hidden_norm_map(TEXT, np.ones((21, 2)), b, tmp_path / "n.png")
    with pytest.raises(ValueError, match="finite"):
        hidden_norm_map(TEXT, np.full(b.shape, np.nan), b, tmp_path / "n.png")


def test_no_matplotlib_at_import_and_no_pyplot(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "import numpy as np\n"
        "import hmrnn.analysis.boundaries, hmrnn.analysis.figures, hmrnn.analysis.report\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported at module import'\n"
        "b = np.zeros((3, 2)); b[1, 0] = 1\n"
        f"hmrnn.analysis.figures.boundary_map('abc', b, {str(tmp_path / 'x.png')!r})\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


class _Segments(HTMLParser):
    """Collects, per layer section, the characters of each segment and each title."""

    def __init__(self) -> None:
        super().__init__()
        self.layers: dict[str, list[list[str]]] = {}
        self.titles: dict[str, list[str]] = {}
        self.stack: list[str] = []
        self.section: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self.section = a["id"]
            self.layers[self.section] = []
            self.titles[self.section] = []
        if tag == "span" and self.section is not None:
            if a.get("class") in ("s0", "s1"):
                self.layers[self.section].append([])
                self.stack.append("segment")
            elif "title" in a:
                self.titles[self.section].append(a["title"])
                self.stack.append("char")
            else:
                self.stack.append("other")

    def handle_endtag(self, tag: str) -> None:
        if tag == "span" and self.stack:
            self.stack.pop()
        if tag == "section":
            self.section = None

    def handle_data(self, data: str) -> None:
        if self.stack and self.stack[-1] == "char":
            self.layers[self.section][-1].append(data)


def test_html_report_escapes_and_segments(tmp_path: Path) -> None:
    b = make_boundary()
    page = html_report(TEXT, b, tmp_path / "seg.html", title="<T&T>").read_text(encoding="utf-8")
    assert "<title>&lt;T&amp;T&gt;</title>" in page
    for escaped in ("&lt;", "&amp;", "&quot;", "&#x27;", "&gt;"):
        assert f">{escaped}</span>" in page
    assert "<script" not in page and "http" not in page
    parser = _Segments()
    parser.feed(page)
    assert sorted(parser.layers) == ["layer1", "layer2", "layer3"]
    shown = TEXT.replace("\n", "\u23ce\n")
    for name, segments in parser.layers.items():
        assert "".join("".join(s) for s in segments) == shown, name
    # layer 1's segments end exactly at its boundaries; the top layer is one segment
    ends = np.flatnonzero(b[:, 0])
    expected = [TEXT[s + 1 : e + 1] for s, e in zip(np.r_[-1, ends[:-1]], ends, strict=True)]
    got = ["".join(s).replace("\u23ce", "") for s in parser.layers["layer1"]]
    assert got == expected
    assert len(parser.layers["layer2"]) == int(b[:, 1].sum()) + 1  # + the unfinished one
    assert len(parser.layers["layer3"]) == 1
    # each character's hover text names every layer's operation at that step
    ops = operations(b)
    titles = parser.titles["layer1"]
    assert len(titles) == len(TEXT)
    for t in (0, 5, 16):
        for k in range(3):
            assert f"layer {k + 1}: {Op(int(ops[t, k])).name}" in titles[t]
    assert titles[15].startswith("step 15 \u23ce")


def test_html_report_rejects_bad_ops(tmp_path: Path) -> None:
    b = make_boundary()
    with pytest.raises(ValueError, match="codes UPDATE"):
        html_report(TEXT, b, tmp_path / "x.html", ops=np.full(b.shape, 3))
    with pytest.raises(ValueError, match="shape of boundary"):
        html_report(TEXT, b, tmp_path / "x.html", ops=np.zeros((2, 3)))


def test_inspect_sequence_bundle(tmp_path: Path) -> None:
    b = make_boundary()
    phrase = np.zeros(len(TEXT), bool)
    phrase[-1] = True
    summary = inspect_sequence(
        TEXT, b, make_norms(b), tmp_path / "out", references={"phrase": phrase}, width=12
    )
    out = tmp_path / "out"
    for name in ("boundary_map.png", "hidden_norms.png"):
        assert (out / name).read_bytes().startswith(PNG_SIGNATURE)
    assert (out / "segments.html").stat().st_size > 0
    loaded = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert loaded == summary
    stats = operation_counts(b)
    for row, s in zip(loaded["operation_counts"], stats, strict=True):
        assert (row["update"], row["copy"], row["flush"]) == (s.update, s.copy, s.flush)
    assert [row["layer"] for row in loaded["operation_counts"]] == [1, 2, 3]
    assert loaded["computation"]["total_updates"] == sum(s.computed for s in stats)
    assert loaded["computation"]["stacked_rnn_updates"] == 3 * len(TEXT)
    assert loaded["boundary_rates"] == [s.boundary_rate for s in stats]
    assert set(loaded["segmentation"]["reference_counts"]) == {
        "word_last",
        "word_separator",
        "phrase",
    }
    assert loaded["warnings"] == []
    assert loaded["checkpoint"] is None and loaded["source"] is None


def test_inspect_page_names_checkpoint_truth_scores_and_saving(tmp_path: Path) -> None:
    b = make_boundary()
    word = text_boundaries(TEXT)
    summary = inspect_sequence(
        TEXT, b, make_norms(b), tmp_path, references={"word": word},
        checkpoint="runs/<x>/best.pt", source="a test text", format="svg", dpi=80,
    )
    assert summary["files"]["boundary_map"] == "boundary_map.svg"
    assert "<svg" in (tmp_path / "boundary_map.svg").read_text(encoding="utf-8")[:2000]
    assert summary["checkpoint"] == "runs/<x>/best.pt" and summary["source"] == "a test text"
    page = (tmp_path / "segments.html").read_text(encoding="utf-8")
    assert "runs/&lt;x&gt;/best.pt" in page and "a test text" in page
    comp = summary["computation"]
    assert f"{comp['total_updates']:,} layer updates" in page
    assert f"{comp['saved_fraction']:.1%} saved" in page
    f1 = summary["segmentation"]["layers"]["layer1"]["word"]["tol0"]["f1"]
    assert f"<td>{f1:.3f}</td>" in page and "<th>F1</th>" in page
    # the true word boundaries, as segments ending exactly at them
    parser = _Segments()
    parser.feed(page)
    truth = ["".join(seg).replace("\u23ce", "") for seg in parser.layers["truth-word"]]
    ends = np.flatnonzero(word)
    assert truth[: len(ends)] == [TEXT[a + 1 : e + 1] for a, e in zip(np.r_[-1, ends[:-1]], ends,
                                                                      strict=True)]


def test_inspect_sequence_without_references_warns_on_collapse(tmp_path: Path) -> None:
    b = np.zeros((6, 3), dtype=np.int8)
    b[:, 0] = 1  # layer 1 fires every step, layer 2 never
    summary = inspect_sequence("abcdef", b, np.ones(b.shape), tmp_path, initial_boundary=[1, 0, 0])
    assert summary["segmentation"] is None
    assert summary["initial_boundary"] == [1, 0, 0]
    assert len(summary["warnings"]) == 2
    assert summary["operation_counts"][0]["flush"] == 6
    with pytest.raises(ValueError, match="at least 2 layers"):
        inspect_sequence("ab", np.zeros((2, 1)), np.ones((2, 1)), tmp_path)

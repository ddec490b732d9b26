"""Tests of hmrnn.analysis.boundaries: operations, counts, reference boundaries and scores."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from hmrnn.analysis.boundaries import (
    COPY,
    FLUSH,
    PRF,
    UPDATE,
    Op,
    after_word_boundaries,
    boundary_prf,
    collapse_warnings,
    computation_summary,
    format_scores,
    operation_counts,
    operations,
    segmentation_scores,
    text_boundaries,
)

U, C, F = UPDATE, COPY, FLUSH


def random_boundary(seed: int, steps: int = 7, layers: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    b = (rng.random((steps, layers)) < 0.5).astype(np.int8)
    b[:, -1] = 0
    return b


def test_codes_match_enum() -> None:
    assert (UPDATE, COPY, FLUSH) == (0, 1, 2)
    assert [Op.UPDATE, Op.COPY, Op.FLUSH] == [0, 1, 2]


def test_two_layer_hand_example() -> None:
    z1 = [1, 0, 0, 1, 0]
    b = np.array([[z, 0] for z in z1])
    expected = np.array(
        [
            # bottom: FLUSH after each z1 = 1; top: UPDATE where z1 = 1, else COPY
            [U, U],
            [F, C],
            [U, C],
            [U, U],
            [F, C],
        ]
    )
    ops = operations(b)
    assert ops.dtype == np.int8
    np.testing.assert_array_equal(ops, expected)


def test_three_layer_hand_example() -> None:
    b = np.array(
        [
            [1, 0, 0],
            [1, 1, 0],
            [0, 0, 0],
            [1, 1, 0],
            [0, 0, 0],
            [1, 0, 0],
        ]
    )
    expected = np.array(
        [
            [U, U, C],
            [F, U, U],
            [F, F, C],
            [U, U, U],
            [F, F, C],
            [U, U, C],
        ]
    )
    np.testing.assert_array_equal(operations(b), expected)
    # A boundary carried in from before the text flushes layers 1 and 2 at t = 0.
    carried = operations(b, initial_boundary=[1, 1, 0])
    np.testing.assert_array_equal(carried[0], [F, F, C])
    np.testing.assert_array_equal(carried[1:], expected[1:])


@pytest.mark.parametrize("seed", range(5))
def test_operation_invariants(seed: int) -> None:
    b = random_boundary(seed, steps=11, layers=4)
    ops = operations(b)
    assert ops.shape == (11, 4)
    assert not (ops[:, 0] == COPY).any(), "the bottom layer always receives input"
    assert not (ops[:, -1] == FLUSH).any(), "the top layer has no boundary to flush on"
    for s in operation_counts(b):
        assert s.update + s.copy + s.flush == 11


def test_operation_counts_and_segment_length() -> None:
    b = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0]])
    stats = operation_counts(b)
    assert [(s.update, s.copy, s.flush) for s in stats] == [(3, 0, 3), (4, 0, 2), (2, 4, 0)]
    assert stats[0].boundary_rate == pytest.approx(4 / 6)
    assert stats[0].mean_segment_length == pytest.approx(6 / 4)
    assert stats[1].mean_segment_length == pytest.approx(3.0)
    assert stats[2].boundary_rate == 0.0
    assert stats[2].mean_segment_length is None
    assert [s.computed for s in stats] == [6, 6, 2]


def test_computation_summary_reproduces_paper_arithmetic() -> None:
    # Figure 4: 270 steps, layer 2 computes 56 times, layer 3 9 times: 335 against 810.
    steps = 270
    b = np.zeros((steps, 3), dtype=np.int8)
    ends2 = np.arange(9) * 30
    b[ends2, 1] = 1
    b[ends2, 0] = 1
    b[ends2 + 1, 0] = 1  # layer 2 FLUSHes at t+1, where layer 1 also fires: one computation
    for t in range(5, steps, 5):
        if b[:, 0].sum() == 56:
            break
        b[t, 0] = 1
    summary = computation_summary(b)
    assert summary["updates_per_layer"] == [270, 56, 9]
    assert summary["total_updates"] == 335
    assert summary["stacked_rnn_updates"] == 810
    assert summary["saved_fraction"] == pytest.approx(1 - 335 / 810)
    assert summary["steps"] == 270 and summary["layers"] == 3


def test_boundary_errors() -> None:
    with pytest.raises(ValueError, match="2-D array"):
        operations(np.zeros(5))
    with pytest.raises(ValueError, match="threshold soft boundaries"):
        operations(np.full((4, 2), 0.5))
    with pytest.raises(ValueError, match="top layer"):
        operations(np.ones((4, 2)))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        operations(np.zeros((4, 2)), initial_boundary=[0, 0, 0])
    with pytest.raises(ValueError, match="top layer must be 0"):
        operations(np.zeros((4, 2)), initial_boundary=[0, 1])


def test_text_boundaries_both_conventions() -> None:
    text = "ab_c d\n\ne "
    last = [0, 1, 0, 1, 0, 1, 0, 0, 1, 0]
    sep = [0, 0, 1, 0, 1, 0, 1, 1, 0, 1]
    np.testing.assert_array_equal(text_boundaries(text), np.array(last, bool))
    np.testing.assert_array_equal(
        text_boundaries(text, convention="separator"), np.array(sep, bool)
    )
    # The end of the text closes the last word.
    assert text_boundaries("ab").tolist() == [False, True]
    assert text_boundaries("a-b", separators="-").tolist() == [True, False, True]
    assert text_boundaries("").shape == (0,)
    with pytest.raises(ValueError, match="'last' or 'separator'"):
        text_boundaries(text, convention="first")


def test_after_word_boundaries_mark_what_follows_each_run_of_letters_and_digits() -> None:
    text = " ab, c9 d.\n\nx"
    flags = [0, 0, 0, 1, 0, 0, 0, 1, 0, 1, 0, 0, 0]
    np.testing.assert_array_equal(after_word_boundaries(text), np.array(flags, bool))
    assert after_word_boundaries("").shape == (0,)
    assert not after_word_boundaries("word").any()  # the text ends before the word does


def test_prf_exact() -> None:
    pred = [1, 0, 1, 0, 1, 0]
    ref = [1, 0, 0, 1, 1, 0]
    r = boundary_prf(pred, ref)
    assert (r.tp, r.fp, r.fn) == (2, 1, 1)
    assert r.precision == pytest.approx(2 / 3)
    assert r.recall == pytest.approx(2 / 3)
    assert r.f1 == pytest.approx(2 / 3)


def test_prf_tolerance_one() -> None:
    pred = [1, 0, 1, 0, 1, 0]
    ref = [1, 0, 0, 1, 1, 0]
    assert boundary_prf(pred, ref, tolerance=1) == PRF(1.0, 1.0, 1.0, 3, 0, 0)
    # One to one: three predictions around a single reference hit it once.
    r = boundary_prf([0, 1, 1, 1, 0], [0, 0, 1, 0, 0], tolerance=1)
    assert (r.tp, r.fp, r.fn) == (1, 2, 0)
    assert r.precision == pytest.approx(1 / 3) and r.recall == 1.0
    # Greedy in time order still finds the maximum matching.
    assert boundary_prf([0, 0, 1, 1], [0, 1, 0, 1], tolerance=1).tp == 2
    # Two steps away is a miss at tolerance 1.
    assert boundary_prf([1, 0, 0], [0, 0, 1], tolerance=1).tp == 0


def test_prf_empty_cases_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert boundary_prf([0, 0, 0], [0, 0, 0]) == PRF(1.0, 1.0, 1.0, 0, 0, 0)
        assert boundary_prf([0, 0, 0], [0, 1, 1]) == PRF(0.0, 0.0, 0.0, 0, 0, 2)
        assert boundary_prf([1, 0, 1], [0, 0, 0], tolerance=1) == PRF(0.0, 0.0, 0.0, 0, 2, 0)
        assert boundary_prf([], []) == PRF(1.0, 1.0, 1.0, 0, 0, 0)


def test_prf_errors() -> None:
    with pytest.raises(ValueError, match="same length"):
        boundary_prf([0, 1], [0, 1, 0])
    with pytest.raises(ValueError, match="non-negative int"):
        boundary_prf([0, 1], [0, 1], tolerance=-1)


def test_segmentation_scores_structure_and_values() -> None:
    text = "ab cd ef"
    b = np.array([[0, 0, 0], [1, 0, 0], [1, 0, 0], [0, 0, 0], [1, 1, 0],
                  [1, 0, 0], [0, 0, 0], [1, 1, 0]])  # fmt: skip
    phrase = np.zeros(8, bool)
    phrase[-1] = True
    scores = segmentation_scores(b, text=text, references={"phrase": phrase})
    assert scores["tolerances"] == [0, 1]
    assert scores["reference_counts"] == {"word_last": 3, "word_separator": 2, "phrase": 1}
    assert list(scores["layers"]) == ["layer1", "layer2"]
    layer1 = scores["layers"]["layer1"]
    assert layer1["boundaries"] == 5
    assert layer1["word_last"]["tol0"] == boundary_prf(b[:, 0], text_boundaries(text))._asdict()
    assert layer1["word_last"]["tol0"]["tp"] == 3
    assert layer1["word_separator"]["tol0"]["tp"] == 2
    assert scores["layers"]["layer2"]["phrase"]["tol1"]["recall"] == 1.0
    table = format_scores(scores)
    assert len(table.splitlines()) == 2 * 3 * 2
    assert "layer2  phrase" in table


def test_segmentation_scores_without_references_and_errors() -> None:
    b = np.zeros((4, 2))
    scores = segmentation_scores(b, text="abcd", tolerance=2)
    assert scores == {"tolerances": [2], "reference_counts": {}, "layers": {}}
    with pytest.raises(ValueError, match="3 characters but boundary has 4 steps"):
        segmentation_scores(b, text="abc")
    with pytest.raises(ValueError, match="reference 'word' has 3 steps"):
        segmentation_scores(b, references={"word": [0, 1, 0]})


def test_collapse_warnings() -> None:
    messages = collapse_warnings([0.0, 0.5, 0.995])
    assert len(messages) == 2
    assert messages[0].startswith("Layer 1 ") and "toward 0" in messages[0]
    assert "layer 2 above it is starved" in messages[0]
    assert messages[1].startswith("Layer 3 ") and "toward 1" in messages[1]
    assert collapse_warnings([0.02, 0.98]) == []
    assert len(collapse_warnings([0.02, 0.98], low=0.05, high=0.95)) == 2
    with pytest.raises(ValueError, match="low < high"):
        collapse_warnings([0.5], low=0.9, high=0.1)

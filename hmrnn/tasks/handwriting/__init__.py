"""Handwriting sequence generation on IAM-OnDB (section 4.2 of Chung, Ahn & Bengio 2017).

:mod:`~hmrnn.tasks.handwriting.data` reads, splits, normalises and batches the pen offsets;
:mod:`~hmrnn.tasks.handwriting.mdn` is Graves's (2013) mixture density output;
:mod:`~hmrnn.tasks.handwriting.model` puts any recurrent stack, the gated output module and
the mixture together, and scores and samples it; :mod:`~hmrnn.tasks.handwriting.plots` draws
strokes and the paper's Figure 5.
"""

from hmrnn.tasks.handwriting.data import (
    MIN_LENGTH,
    PAPER_SPLIT_SIZES,
    SPLIT_SEED,
    HandwritingData,
    HandwritingDataError,
    Normalizer,
    pad_batch,
    to_offsets,
    to_points,
)
from hmrnn.tasks.handwriting.mdn import MixtureDensityHead, MixtureParams, log_density, loss, sample
from hmrnn.tasks.handwriting.model import (
    EvalTotals,
    HandwritingModel,
    build_handwriting_model,
    evaluate,
    evaluation_totals,
    line_boundaries,
    offset_boundaries,
    sample_strokes,
    sequence_log_likelihood,
)
from hmrnn.tasks.handwriting.plots import boundary_agreement, draw_strokes, segment_figure

__all__ = [
    "MIN_LENGTH",
    "PAPER_SPLIT_SIZES",
    "SPLIT_SEED",
    "EvalTotals",
    "HandwritingData",
    "HandwritingDataError",
    "HandwritingModel",
    "MixtureDensityHead",
    "MixtureParams",
    "Normalizer",
    "boundary_agreement",
    "build_handwriting_model",
    "draw_strokes",
    "evaluate",
    "evaluation_totals",
    "line_boundaries",
    "log_density",
    "loss",
    "offset_boundaries",
    "pad_batch",
    "sample",
    "sample_strokes",
    "segment_figure",
    "sequence_log_likelihood",
    "to_offsets",
    "to_points",
]

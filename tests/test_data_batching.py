"""Tests of StreamBatcher and eval_batches (hmrnn.data.batching)."""

import itertools

import numpy as np
import pytest
import torch

from hmrnn.data import DataError, StreamBatcher, eval_batches


def test_stream_batcher_layout():
    ids = np.arange(100, 153)  # 53 symbols, N=3 -> S=17, 2 dropped
    b = StreamBatcher(ids, batch_size=3, seq_len=5)
    assert b.streams.shape == (17, 3) and b.streams.dtype == torch.int64
    assert b.stream_len == 17 and b.num_segments == (17 - 1) // 5 == 3 and len(b) == 3
    for j in range(3):
        assert b.streams[:, j].tolist() == list(range(100 + 17 * j, 100 + 17 * (j + 1)))
    x, y = b.segment(1)
    assert x.shape == y.shape == (5, 3) and x.dtype == y.dtype == torch.int64
    assert x[:, 2].tolist() == [139, 140, 141, 142, 143]
    torch.testing.assert_close(y, x + 1)


def test_segments_continue_each_other():
    ids = np.random.default_rng(0).integers(0, 7, size=211)
    b = StreamBatcher(ids, batch_size=4, seq_len=6)
    xs, ys = zip(*b, strict=True)
    assert len(xs) == b.num_segments == 8
    x = torch.cat(xs)  # (K*T, N)
    y = torch.cat(ys)
    for j in range(4):
        start = j * b.stream_len
        assert x[:, j].tolist() == ids[start : start + 48].tolist()
        assert y[:, j].tolist() == ids[start + 1 : start + 49].tolist()
    with pytest.raises(IndexError, match="segment 8 is out of range; there are 8"):
        b.segment(8)


def test_stream_batcher_too_short():
    StreamBatcher(np.zeros(3 * 8, dtype=np.int64), batch_size=3, seq_len=7)  # exactly enough
    with pytest.raises(DataError) as info:
        StreamBatcher(np.zeros(23, dtype=np.int64), batch_size=3, seq_len=7)
    assert str(info.value) == (
        "data too short: needs at least 24 symbols for one batch of 3 segments of length 7, has 23"
    )
    with pytest.raises(DataError, match="batch_size must be a positive int, got 0"):
        StreamBatcher(np.zeros(50, dtype=np.int64), batch_size=0, seq_len=7)
    with pytest.raises(DataError, match="1-D array of integer ids"):
        StreamBatcher(np.zeros((5, 10)), batch_size=1, seq_len=2)


def test_rank_slices_cover_the_batch_once():
    b = StreamBatcher(np.arange(600), batch_size=6, seq_len=9)
    x, _ = b.segment(2)
    for world_size in (1, 2, 3, 6):
        parts = [x[:, b.rank_slice(r, world_size)] for r in range(world_size)]
        assert all(p.shape == (9, 6 // world_size) for p in parts)
        torch.testing.assert_close(torch.cat(parts, dim=1), x)
    with pytest.raises(DataError, match="batch_size 6 is not divisible by world_size 4"):
        b.rank_slice(0, 4)
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\), got 2"):
        b.rank_slice(2, 2)


@pytest.mark.parametrize(
    ("length", "batch_size", "seq_len"),
    list(itertools.product([2, 3, 10, 37, 64], [1, 3, 7, 40], [1, 4, 9])),
)
def test_eval_batches_score_every_target_once(length, batch_size, seq_len):
    ids = np.random.default_rng(length).permutation(1000)[:length]  # distinct ids
    batches = eval_batches(ids, batch_size, seq_len)
    assert batches.num_targets == length - 1
    windows = list(batches)
    assert len(windows) == len(batches) == batches.num_windows
    scored = []
    streams = [[] for _ in range(batch_size)]
    for w, (x, y, mask) in enumerate(windows):
        assert x.shape == y.shape == mask.shape and x.shape[1] == batch_size
        assert x.dtype == y.dtype == torch.int64 and mask.dtype == torch.bool
        assert x.shape[0] == seq_len or w == len(windows) - 1
        assert 1 <= x.shape[0] <= seq_len
        for j in range(batch_size):
            real = mask[:, j]
            # Padding only after a stream's real steps: the carried state stays exact.
            assert not (real[1:] & ~real[:-1]).any()
            streams[j] += list(zip(x[real, j].tolist(), y[real, j].tolist(), strict=True))
        scored += y[mask].tolist()
    assert sorted(scored) == sorted(ids[1:].tolist())
    assert sum(int(m.sum()) for _, _, m in windows) == length - 1
    # Each stream is a run of consecutive pairs (ids[i], ids[i+1]) of nearly equal length.
    nonempty = [s for s in streams if s]
    position = {int(v): i for i, v in enumerate(ids)}
    for s in nonempty:
        start = position[s[0][0]]
        assert s == [(int(ids[i]), int(ids[i + 1])) for i in range(start, start + len(s))]
    lengths = [len(s) for s in streams]
    assert max(lengths) - min(lengths) <= 1
    assert lengths == sorted(lengths, reverse=True)  # the last streams are the padded ones
    assert [p for s in streams for p in s] == list(zip(ids[:-1], ids[1:], strict=True))


def test_eval_batches_restart_and_edge_cases():
    ids = np.arange(11)
    batches = eval_batches(ids, batch_size=3, seq_len=2)
    first = [tuple(t.tolist() for t in w) for w in batches]
    assert first == [tuple(t.tolist() for t in w) for w in batches]
    x, y, mask = list(batches)[-1]
    assert x.shape == (2, 3)  # streams of 4, 3, 3 targets -> windows of 2 and 2
    assert mask.tolist() == [[True, True, True], [True, False, False]]
    with pytest.raises(DataError, match="needs at least 2 symbols to score one target, has 1"):
        eval_batches(np.array([4]), batch_size=2, seq_len=3)
    with pytest.raises(DataError, match="seq_len must be a positive int, got -1"):
        eval_batches(ids, batch_size=2, seq_len=-1)
    ((x, y, mask),) = list(eval_batches(np.array([5, 6]), batch_size=4, seq_len=3))
    assert x.shape == (1, 4) and mask.tolist() == [[True, False, False, False]]
    assert (x[0, 0].item(), y[0, 0].item()) == (5, 6)

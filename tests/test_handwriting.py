"""Tests of hmrnn.tasks.handwriting: data, mixture density head, model, sampling and plots.

Every test makes its own small stroke sets; only ``test_real_file_counts`` reads the
licensed IAM-OnDB copy, and it skips when the file is absent.
"""

from __future__ import annotations

import io
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp

from hmrnn.data.errors import DataError
from hmrnn.model.baselines import LSTMStack
from hmrnn.model.hmlstm import HMLSTM
from hmrnn.tasks.handwriting import data as hw
from hmrnn.tasks.handwriting import mdn
from hmrnn.tasks.handwriting.model import (
    HandwritingModel,
    evaluate,
    line_boundaries,
    sample_strokes,
    sequence_log_likelihood,
)
from hmrnn.tasks.handwriting.plots import boundary_agreement, draw_strokes, segment_figure
from hmrnn.tasks.handwriting.task import load_handwriting_data

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "handwriting"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_line(rng: np.random.Generator, num_points: int) -> np.ndarray:
    """Absolute (x, y, pen_up) points: strokes of 3-12 small moves, jumps between them."""
    moves = rng.normal(scale=3.0, size=(num_points, 2)) + [4.0, 0.0]
    pen = np.zeros(num_points)
    t = int(rng.integers(3, 12))
    while t < num_points:
        pen[t] = 1
        if t + 1 < num_points:
            moves[t + 1] += rng.normal(scale=40.0, size=2)  # the jump to the next stroke
        t += int(rng.integers(3, 12))
    pen[-1] = 1
    xy = np.round(np.cumsum(moves, axis=0) + [100.0, 500.0])
    return np.column_stack([xy, pen]).astype(np.float32)


def tiny_model(dtype: torch.dtype = torch.float32, seed: int = 0) -> HandwritingModel:
    torch.manual_seed(seed)
    return HandwritingModel(
        LSTMStack(3, [6, 5], 2, dtype=dtype), embedding_size=7, num_components=4
    )


def random_params(shape: tuple[int, ...], K: int, gen: torch.Generator) -> mdn.MixtureParams:
    def r(*s: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*s, generator=gen, dtype=torch.float64) * scale

    return mdn.MixtureParams(
        r(*shape, K, scale=2.0),
        r(*shape, K),
        r(*shape, K),
        r(*shape, K, scale=0.5),
        r(*shape, K, scale=0.5),
        r(*shape, K, scale=1.5),
        r(*shape, scale=2.0),
    )


# --------------------------------------------------------------------- mixture density


def test_log_density_matches_scipy_float64() -> None:
    gen = torch.Generator().manual_seed(1)
    shape, K = (4, 3), 5
    params = random_params(shape, K, gen)
    target = torch.randn(*shape, 3, generator=gen, dtype=torch.float64)
    target[..., 2] = (torch.rand(*shape, generator=gen) < 0.3).double()
    got = mdn.log_density(params, target).numpy()

    pi = params.pi.numpy()
    mu_x, mu_y = params.mu_x.numpy(), params.mu_y.numpy()
    sx, sy, rho = params.sigma_x.numpy(), params.sigma_y.numpy(), params.rho.numpy()
    e = params.e.numpy()
    x = target.numpy()
    expected = np.empty(shape)
    for idx in np.ndindex(*shape):
        log_terms = []
        for k in range(K):
            cov = [
                [sx[idx][k] ** 2, rho[idx][k] * sx[idx][k] * sy[idx][k]],
                [rho[idx][k] * sx[idx][k] * sy[idx][k], sy[idx][k] ** 2],
            ]
            normal = stats.multivariate_normal([mu_x[idx][k], mu_y[idx][k]], cov)
            log_terms.append(np.log(pi[idx][k]) + normal.logpdf(x[idx][:2]))
        expected[idx] = logsumexp(log_terms) + stats.bernoulli(e[idx]).logpmf(x[idx][2])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)


def test_log_density_is_finite_when_tanh_saturates() -> None:
    gen = torch.Generator().manual_seed(2)
    params = random_params((3,), 2, gen)
    rho_hat = torch.tensor([[30.0, -30.0]] * 3, dtype=torch.float64, requires_grad=True)
    params = params._replace(
        rho_hat=rho_hat, pi_hat=torch.tensor([[-200.0, 200.0]] * 3, dtype=torch.float64)
    )
    target = torch.zeros(3, 3, dtype=torch.float64)
    out = mdn.log_density(params, target).float()
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert torch.isfinite(rho_hat.grad).all()


def test_head_shapes_and_ranges() -> None:
    head = mdn.MixtureDensityHead(6, num_components=4)
    params = head(torch.randn(7, 3, 6))
    assert params.mu_x.shape == (7, 3, 4) and params.rho_hat.shape == (7, 3, 4)
    assert params.e_hat.shape == (7, 3)
    torch.testing.assert_close(params.pi.sum(-1), torch.ones(7, 3))
    assert (params.sigma_x > 0).all() and (params.rho.abs() < 1).all()
    assert ((params.e > 0) & (params.e < 1)).all()
    with pytest.raises(ValueError, match="target must have shape"):
        mdn.log_density(params, torch.zeros(7, 3, 2))


def test_sample_moments_and_bias() -> None:
    n = 40000
    one = torch.ones(n, 1, dtype=torch.float64)
    rho = 0.6
    params = mdn.MixtureParams(
        0 * one,
        1.5 * one,
        -2.0 * one,
        math.log(2.0) * one,
        math.log(0.5) * one,
        math.atanh(rho) * one,
        torch.full((n,), math.log(0.2 / 0.8), dtype=torch.float64),
    )
    x = mdn.sample(params, generator=torch.Generator().manual_seed(3)).numpy()
    np.testing.assert_allclose(x[:, :2].mean(0), [1.5, -2.0], atol=0.03)
    cov = np.cov(x[:, :2].T)
    np.testing.assert_allclose(cov, [[4.0, rho * 2 * 0.5], [rho * 2 * 0.5, 0.25]], rtol=0.05)
    assert set(np.unique(x[:, 2])) == {0.0, 1.0}
    assert abs(x[:, 2].mean() - 0.2) < 0.01
    biased = mdn.sample(params, bias=1.0, generator=torch.Generator().manual_seed(3)).numpy()
    np.testing.assert_allclose(biased[:, :2].std(0), np.array([2.0, 0.5]) / math.e, rtol=0.03)
    # bias sharpens the choice of component: 0.73 / 0.27 weights become 0.88 / 0.12
    two = mdn.MixtureParams(
        torch.tensor([[1.0, 0.0]]).repeat(n, 1),
        torch.tensor([[-10.0, 10.0]]).repeat(n, 1),
        torch.zeros(n, 2),
        torch.full((n, 2), -3.0),
        torch.full((n, 2), -3.0),
        torch.zeros(n, 2),
        torch.zeros(n),
    )
    share = [
        (mdn.sample(two, bias=b, generator=torch.Generator().manual_seed(4))[:, 0] < 0)
        .double()
        .mean()
        .item()
        for b in (0.0, 1.0)
    ]
    assert abs(share[0] - 1 / (1 + math.exp(-1))) < 0.01
    assert abs(share[1] - 1 / (1 + math.exp(-2))) < 0.01


# ------------------------------------------------------------------------- data and batches


def test_offsets_and_normalizer_round_trip() -> None:
    points = fake_line(np.random.default_rng(5), 23)
    offsets = hw.to_offsets(points)
    assert offsets.shape == (22, 3)
    np.testing.assert_array_equal(offsets[:, 2], points[1:, 2])
    back = hw.to_points(offsets, start=points[0, :2])
    expected = points.copy()
    expected[0, 2] = 0.0
    np.testing.assert_array_equal(back, expected)
    torch.testing.assert_close(
        hw.to_points(torch.from_numpy(offsets), start=points[0, :2]), torch.from_numpy(expected)
    )

    norm = hw.Normalizer.fit([offsets], split_seed=9)
    z = norm.normalize(offsets)
    np.testing.assert_allclose(z[:, :2].mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z[:, :2].std(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(z[:, 2], offsets[:, 2])
    np.testing.assert_array_equal(norm.normalize(offsets.astype(np.int16)), z)  # no truncation
    np.testing.assert_allclose(norm.denormalize(z), offsets, atol=1e-4)
    zt = norm.normalize(torch.from_numpy(offsets))
    torch.testing.assert_close(zt, torch.from_numpy(z))
    torch.testing.assert_close(norm.denormalize(zt), torch.from_numpy(offsets), atol=1e-4, rtol=0)
    again = hw.Normalizer.from_dict(norm.to_dict())
    assert again == norm and again.to_dict()["split_seed"] == 9
    with pytest.raises(ValueError, match="only 'offsets' is known"):
        hw.Normalizer.from_dict({**norm.to_dict(), "kind": "positions"})


def test_split_is_deterministic_and_disjoint() -> None:
    rng = np.random.default_rng(6)
    lengths = rng.integers(5, 40, size=50)
    kept = set(np.flatnonzero(lengths >= 20).tolist())
    sizes = (len(kept) - 6, 3, 3)
    a = hw.split_indices(lengths, sizes, min_length=20, seed=11)
    b = hw.split_indices(lengths, sizes, min_length=20, seed=11)
    c = hw.split_indices(lengths, sizes, min_length=20, seed=12)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert [len(x) for x in a] == list(sizes)
    sets = [set(x.tolist()) for x in a]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert sets[0] | sets[1] | sets[2] == kept
    assert any(not np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    with pytest.raises(ValueError, match=f"{len(kept)} lines have at least 20 points"):
        hw.split_indices(lengths, (1, 1, 1), min_length=20)


def test_build_splits_normalises_by_training_offsets_only() -> None:
    rng = np.random.default_rng(7)
    lines = [fake_line(rng, int(n)) for n in rng.integers(10, 40, size=50)]
    lines[3][:, 0] *= 50  # a wild line: it must move the statistics only if it is in train
    ids = [f"line-{i:02d}" for i in range(50)]
    kept = sum(len(x) >= 20 for x in lines)
    data = hw.build_splits(ids, lines, (kept - 8, 4, 4), min_length=20, seed=3)
    train_idx = [ids.index(i) for i in data.train_ids]
    raw_train = [hw.to_offsets(lines[i]) for i in train_idx]
    assert data.normalizer == hw.Normalizer.fit(raw_train, split_seed=3, min_length=20)
    np.testing.assert_allclose(data.train[0], data.normalizer.normalize(raw_train[0]))
    assert all(len(lines[ids.index(i)]) >= 20 for i in data.test_ids + data.valid_ids)
    assert [len(data.train), len(data.valid), len(data.test)] == [kept - 8, 4, 4]


def test_pad_batch_shifts_and_masks() -> None:
    rng = np.random.default_rng(8)
    seqs = [rng.normal(size=(n, 3)).astype(np.float32) for n in (5, 9, 7)]
    inputs, targets, mask = hw.pad_batch(seqs)
    assert inputs.shape == (8, 3, 3) and targets.shape == (8, 3, 3) and mask.shape == (8, 3)
    assert mask.sum(0).tolist() == [4, 8, 6]
    for n, s in enumerate(seqs):
        t = len(s) - 1
        np.testing.assert_array_equal(inputs[:t, n].numpy(), s[:-1])
        np.testing.assert_array_equal(targets[:t, n].numpy(), s[1:])
        assert not mask[t:, n].any()
    with pytest.raises(ValueError, match="T >= 2"):
        hw.pad_batch([np.zeros((1, 3))])


def write_tar(path: Path, lines: dict[str, np.ndarray]) -> None:
    """A tiny lineStrokes tar.xz in the IAM-OnDB XML layout."""
    with tarfile.open(path, mode="w:xz") as tar:
        for line_id, points in lines.items():
            strokes, current = [], []
            for x, y, pen in points:
                current.append(f'<Point x="{int(x)}" y="{int(y)}" time="0.5"/>')
                if pen:
                    strokes.append("<Stroke>" + "".join(current) + "</Stroke>")
                    current = []
            body = (
                "<WhiteboardCaptureSession><StrokeSet>"
                + "".join(strokes)
                + "</StrokeSet></WhiteboardCaptureSession>"
            ).encode()
            info = tarfile.TarInfo(f"lineStrokes/{line_id[:3]}/{line_id[:7]}/{line_id}.xml")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))


def test_npz_and_tar_readers_agree(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    lines = {f"b0{i}-000-0{i}": fake_line(rng, 15 + i) for i in range(4)}
    write_tar(tmp_path / "strokes.tar.xz", lines)
    ids = sorted(lines)
    stacked = np.concatenate([lines[i] for i in ids]).astype(np.int16)
    offsets = np.cumsum([0] + [len(lines[i]) for i in ids])
    np.savez_compressed(
        tmp_path / "lines.npz", ids=np.asarray(ids), offsets=offsets, points=stacked
    )
    for path in (tmp_path / "strokes.tar.xz", tmp_path / "lines.npz"):
        got_ids, got = hw.read_lines(path)
        assert got_ids == ids
        for i, g in zip(ids, got, strict=True):
            assert g.dtype == np.float32
            np.testing.assert_array_equal(g, lines[i])
    data = hw.build_splits(*hw.read_lines(tmp_path / "lines.npz"), (2, 1, 1), min_length=15)
    assert sorted(data.train_ids + data.valid_ids + data.test_ids) == ids


def test_loader_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        hw.read_lines(tmp_path / "absent.npz")
    np.savez(tmp_path / "partial.npz", ids=np.asarray(["a"]), offsets=np.array([0, 3]))
    with pytest.raises(hw.HandwritingDataError, match=r"lacks the arrays \['points'\]"):
        hw.read_lines(tmp_path / "partial.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="could not be read as an npz archive"):
        hw.read_lines(tmp_path / "junk.npz")
    np.savez(
        tmp_path / "bad.npz",
        ids=np.asarray(["a", "b"]),
        offsets=np.array([0, 3, 2]),
        points=np.zeros((2, 3), dtype=np.int16),
    )
    with pytest.raises(DataError, match="must rise strictly"):
        hw.read_lines(tmp_path / "bad.npz")
    with pytest.raises(DataError, match="neither"):
        hw.read_lines(tmp_path)
    np.savez(
        tmp_path / "few.npz",
        ids=np.asarray(["a"]),
        offsets=np.array([0, 3]),
        points=np.zeros((3, 3), dtype=np.int16),
    )
    paper = {"sizes": list(hw.PAPER_SPLIT_SIZES), "seed": hw.SPLIT_SEED,
             "min_length": hw.MIN_LENGTH}  # a checkpoint's record of the paper's split
    with pytest.raises(DataError, match="split sizes"):
        load_handwriting_data(tmp_path / "few.npz", split=paper)


@pytest.mark.skipif(not (DATA / hw.NPZ_NAME).is_file(), reason="IAM-OnDB npz not present")
def test_real_file_counts() -> None:
    ids, lines = hw.read_npz(DATA / hw.NPZ_NAME)
    lengths = np.array([len(x) for x in lines])
    assert len(lines) == 12195
    assert int((lengths >= 300).sum()) == 11628
    assert round(float(lengths[lengths >= 300].mean()), 1) == 648.4
    data = hw.build_splits(ids, lines)
    assert (len(data.train), len(data.valid), len(data.test)) == (10465, 581, 582)
    assert data.normalizer.to_dict()["split_seed"] == hw.SPLIT_SEED
    assert abs(data.normalizer.mean_x - 8.21) < 0.05 and abs(data.normalizer.std_x - 42.5) < 0.5


# ------------------------------------------------------------------------------- the model


def test_padded_batch_loss_equals_sum_of_single_sequences() -> None:
    model = tiny_model(torch.float64)
    rng = np.random.default_rng(10)
    seqs = [rng.normal(size=(n, 3)) for n in (5, 9, 7)]
    for s in seqs:
        s[:, 2] = rng.integers(0, 2, size=len(s))
    inputs, targets, mask = (x.double() if x.is_floating_point() else x for x in hw.pad_batch(seqs))
    inputs[~mask] = 1e3  # garbage in the padding must not leak into the loss
    targets[~mask] = -1e3
    params, _, _ = model(inputs)
    batch = mdn.loss(params, targets, mask, reduction="sum")
    per_seq = sequence_log_likelihood(model, inputs, targets, mask)
    alone = []
    for s in seqs:
        i, t, m = (x.double() if x.is_floating_point() else x for x in hw.pad_batch([s]))
        alone.append(mdn.loss(model(i)[0], t, m, reduction="sum").item())
    np.testing.assert_allclose(batch.item(), sum(alone), rtol=1e-12)
    np.testing.assert_allclose(-per_seq.detach().numpy(), alone, rtol=1e-12)
    mean = mdn.loss(params, targets, mask)
    np.testing.assert_allclose(mean.item(), sum(alone) / int(mask.sum()), rtol=1e-12)


def test_model_rejects_bad_input_and_batch_first() -> None:
    with pytest.raises(ValueError, match="time-major"):
        HandwritingModel(LSTMStack(3, 4, 1, batch_first=True))
    with pytest.raises(ValueError, match="input_size=3"):
        tiny_model()(torch.zeros(4, 2, 2))
    model = tiny_model()
    with pytest.raises(ValueError, match="needs the normalizer"):
        sequence_log_likelihood(model, *hw.pad_batch([np.zeros((4, 3))]), include_jacobian=True)


def test_sampling_shape_pen_and_reproducibility() -> None:
    model = tiny_model()
    prime = np.random.default_rng(11).normal(size=(6, 3)).astype(np.float32)
    prime[:, 2] = 0

    def draw(seed: int, **kw: object) -> torch.Tensor:
        return sample_strokes(
            model, 6, bias=0.5, generator=torch.Generator().manual_seed(seed), num_samples=2, **kw
        )

    a, b, c = draw(0), draw(0), draw(1)
    assert a.shape == (6, 2, 3)
    assert set(a[..., 2].unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
    primed = draw(0, prime=prime)
    assert primed.shape == (6, 2, 3) and not torch.equal(primed, a)


def test_sampling_streams_with_carried_state() -> None:
    # The first sample must come from the distribution after reading the whole prime.
    model = tiny_model(torch.float64)
    prime = torch.randn(5, 3, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    params, _, _ = model(prime.unsqueeze(1))
    expected = mdn.sample(params.at(-1), 0.0, torch.Generator().manual_seed(13))
    got = sample_strokes(model, 1, prime=prime, generator=torch.Generator().manual_seed(13))
    torch.testing.assert_close(got[0], expected, rtol=0, atol=0)


def test_evaluate_reports_consistent_measures() -> None:
    model = tiny_model()
    rng = np.random.default_rng(14)
    seqs = [rng.normal(size=(n, 3)).astype(np.float32) for n in (6, 11, 4, 8)]
    norm = hw.Normalizer(1.0, 2.0, 3.0, 5.0)
    model.train()
    out = evaluate(model, seqs, batch_size=3, normalizer=norm)
    assert model.training
    with torch.no_grad():
        ll = sum(sequence_log_likelihood(model, *hw.pad_batch([s])).item() for s in seqs)
    assert out["num_steps"] == 25 and out["num_sequences"] == 4
    assert out["loglik_per_sequence"] == pytest.approx(ll / 4, rel=1e-5)
    assert out["nll_per_sequence"] == pytest.approx(-ll / 4, rel=1e-5)
    assert out["nats_per_step"] == pytest.approx(-ll / 25, rel=1e-5)
    assert out["loglik_per_sequence_raw"] == pytest.approx((ll - 25 * math.log(15.0)) / 4, rel=1e-5)


def test_line_boundaries_align_with_points() -> None:
    torch.manual_seed(15)
    model = HandwritingModel(HMLSTM(3, [5, 4], 2), embedding_size=6, num_components=3)
    points = fake_line(np.random.default_rng(16), 12)
    norm = hw.Normalizer.fit([hw.to_offsets(points)])
    z = line_boundaries(model, points, norm)
    assert z.shape == (12, 2)
    inputs = torch.from_numpy(norm.normalize(hw.to_offsets(points))).unsqueeze(1)
    _, output, _ = model(inputs)
    np.testing.assert_array_equal(z[0], [0.0, 0.0])
    np.testing.assert_array_equal(z[1:], output.boundary[:, 0].detach().numpy())
    with pytest.raises(ValueError, match="no boundary detectors"):
        line_boundaries(tiny_model(), points, norm)


def test_tiny_training_lowers_the_loss() -> None:
    rng = np.random.default_rng(17)
    lines = [fake_line(rng, int(n)) for n in rng.integers(25, 35, size=6)]
    norm = hw.Normalizer.fit([hw.to_offsets(x) for x in lines])
    seqs = [norm.normalize(hw.to_offsets(x)) for x in lines]
    torch.manual_seed(18)
    model = HandwritingModel(LSTMStack(3, 16, 2), embedding_size=16, num_components=3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = evaluate(model, seqs, batch_size=6)["nats_per_step"]
    inputs, targets, mask = hw.pad_batch(seqs)
    for _ in range(20):
        opt.zero_grad()
        mdn.loss(model(inputs)[0], targets, mask).backward()
        opt.step()
    after = evaluate(model, seqs, batch_size=6)["nats_per_step"]
    assert after < before - 0.5, (before, after)


# ----------------------------------------------------------------------------------- plots


def _assert_png_with_ink(path: Path) -> None:
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_MAGIC
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50
    assert (image[..., :3].min(axis=-1) < 0.5).sum() > 50  # something was drawn


def test_drawings_are_png_files(tmp_path: Path) -> None:
    points = fake_line(np.random.default_rng(19), 60)
    _assert_png_with_ink(draw_strokes(points, tmp_path / "line.png"))
    _assert_png_with_ink(draw_strokes(hw.to_offsets(points), tmp_path / "off.png", offsets=True))
    z = np.zeros(60)
    z[::7] = 1
    _assert_png_with_ink(segment_figure(points, points[:, 2], z, tmp_path / "fig5.png"))
    with pytest.raises(ValueError, match="image format"):
        draw_strokes(points, tmp_path / "line.jpg")
    with pytest.raises(ValueError, match="one flag per point"):
        segment_figure(points, points[:, 2], z[:-1], tmp_path / "fig5.png")


def test_boundary_agreement_with_tolerance() -> None:
    pen_up = np.array([0, 0, 1, 0, 0, 1, 0, 1])
    z = np.array([0, 0, 0, 1, 0, 1, 0, 0])
    exact = boundary_agreement(z, pen_up, tolerance=0)
    assert (exact.tp, exact.fp, exact.fn) == (1, 1, 2)
    loose = boundary_agreement(z, pen_up, tolerance=1)
    assert (loose.tp, loose.fp, loose.fn) == (2, 0, 1)
    assert loose.precision == 1.0 and loose.recall == pytest.approx(2 / 3)
    assert loose.f1 == pytest.approx(0.8)

"""Boundary-rate control and the detectors' instruments (docs/model.md decision 9;
hmrnn.model.boundary_control), and their wiring into a character-model run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import hmrnn.model.cell as cell_module
from hmrnn import HMLSTM
from hmrnn.analysis.verdict import hierarchy_summary, hierarchy_verdict
from hmrnn.model.boundary_control import (
    LOGIT_FLOOR,
    DetectorRelease,
    RateController,
    binomial_prior_loss,
    boundary_grad_norms,
    boundary_preactivation,
    calibrate_boundary_biases,
    cap_boundary_gains,
    cap_boundary_rows,
    detector_shares,
    ratio_loss,
    recentre_boundary_biases,
    surprisal_prior_loss,
)
from hmrnn.model.hmlstm import HMLSTMState


@pytest.mark.parametrize("layer_norm", [False, True])
def test_preactivation_equals_what_the_cell_computes(
    layer_norm: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    rnn = HMLSTM(5, [6, 4, 3], 3, layer_norm=layer_norm, fast=False).double()
    x = torch.randn(7, 2, 5, dtype=torch.float64)
    zeros = rnn.initial_state(2)
    state = HMLSTMState(tuple(torch.randn_like(h) for h in zeros.h), zeros.c,
                        tuple((torch.rand_like(z) > 0.5).double() for z in zeros.z))
    seen: list[torch.Tensor] = []
    hard_sigmoid = cell_module.hard_sigmoid

    def spy(s: torch.Tensor, slope: torch.Tensor | float,
            noise: torch.Tensor | None = None) -> torch.Tensor:
        seen.append(s.detach().clone())  # the cell's s_z, (N, 1), layer by layer
        return hard_sigmoid(s, slope, noise)

    monkeypatch.setattr(cell_module, "hard_sigmoid", spy)
    out, _ = rnn(x, state)
    monkeypatch.undo()
    expected = torch.stack([torch.cat(seen[2 * t : 2 * t + 2], dim=1) for t in range(7)])
    torch.testing.assert_close(boundary_preactivation(rnn, x, state, out), expected,
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(boundary_preactivation(rnn, x, state, out, layers=[1]),
                               expected[..., 1:], rtol=0, atol=1e-12)


def test_controller_moves_each_bias_towards_its_target_even_when_saturated() -> None:
    rnn = HMLSTM(4, 5, 3)
    top = rnn.cells[2].bias.clone()
    with torch.no_grad():
        rnn.cells[0].bias[-1] = -100.0  # dead at 0 for every input: no gradient reaches it
    before = [float(c.bias[-1].detach()) for c in rnn.cells[:2]]
    RateController(rnn, [0.2, 0.05], gain=0.5).update([0.0, 0.45])
    after = [float(c.bias[-1].detach()) for c in rnn.cells[:2]]
    assert after[0] == pytest.approx(before[0] + 0.5 * 0.2)
    assert after[1] == pytest.approx(before[1] - 0.5 * 0.4)
    assert torch.equal(rnn.cells[2].bias, top)  # the top layer has no detector
    RateController(rnn, [0.2, 0.05], gain=[0.5, 2.0]).update([0.0, 0.45])  # one per layer
    final = [float(c.bias[-1].detach()) for c in rnn.cells[:2]]
    assert final[0] == pytest.approx(after[0] + 0.5 * 0.2)
    assert final[1] == pytest.approx(after[1] - 2.0 * 0.4)


def test_logit_error_matches_the_linear_one_near_the_target_and_recovers_faster() -> None:
    rnn = HMLSTM(4, 5, 3)
    linear = RateController(rnn, [0.2, 0.05], gain=1.0)
    logit = RateController(rnn, [0.2, 0.05], gain=1.0, error="logit")
    for target in (0.2, 0.05):
        # the small-signal gain is the linear controller's: t(1-t) d logit(r)/dr = 1 at r = t
        assert logit._error(target, target + 1e-6) == pytest.approx(
            linear._error(target, target + 1e-6), rel=1e-3)
        # a dead layer (rate 0) is revived faster, and nearly as fast as a saturated one
        # (rate 1) is pushed down (linear: 1/t - 1 times slower, 19x at t = 0.05)
        assert logit._error(target, 0.0) > 3 * linear._error(target, 0.0)
        assert -logit._error(target, 1.0) < 2.5 * logit._error(target, 0.0)
        # bounded: the rate is clipped to [LOGIT_FLOOR, 1 - LOGIT_FLOOR]
        assert logit._error(target, 0.0) == logit._error(target, LOGIT_FLOOR)
    before = float(rnn.cells[1].bias[-1].detach())
    logit.update([0.2, 0.0])
    assert float(rnn.cells[1].bias[-1].detach()) == pytest.approx(
        before + 0.05 * 0.95 * (math.log(0.05 / 0.95) - math.log(LOGIT_FLOOR / (1 - LOGIT_FLOOR))))


def test_warmup_starts_every_target_at_layer_1s_and_reaches_its_own() -> None:
    rnn = HMLSTM(4, 5, 4)  # three boundary layers
    controller = RateController(rnn, [0.2, 0.05, 0.01], gain=1.0, error="logit", warmup=100)
    assert controller.targets_at(0) == pytest.approx((0.2, 0.2, 0.2))
    logit = [math.log(t / (1 - t)) for t in (0.2, 0.05, 0.01)]
    halfway = controller.targets_at(50)
    for k in range(3):  # the midpoint in log-odds
        assert math.log(halfway[k] / (1 - halfway[k])) == pytest.approx(
            (logit[0] + logit[k]) / 2)
    assert controller.targets_at(100) == controller.targets_at(10**6) == (0.2, 0.05, 0.01)
    before = float(rnn.cells[1].bias[-1].detach())
    controller.update([0.2, 0.2, 0.2], step=0)  # on target during the warmup: no move
    assert float(rnn.cells[1].bias[-1].detach()) == pytest.approx(before, abs=1e-9)
    controller.update([0.2, 0.2, 0.2])  # no step: the final targets
    assert float(rnn.cells[1].bias[-1].detach()) < before


@pytest.mark.parametrize("own_bias", [False, True])
def test_owning_the_bias_keeps_the_optimiser_off_its_boundary_entry(own_bias: bool) -> None:
    torch.manual_seed(0)
    rnn = HMLSTM(4, 5, 3, boundary="soft")  # soft: every detector passes a gradient
    RateController(rnn, [0.2, 0.05], gain=0.05, own_bias=own_bias)
    output, _ = rnn(torch.randn(6, 2, 4))
    output.hidden[-1].square().sum().backward()
    for cell in rnn.cells[:2]:
        assert cell.bias.grad is not None
        assert (cell.bias.grad[-1] == 0) == own_bias
        assert cell.bias.grad[:-1].abs().sum() > 0  # the gates' biases are trained as before
    assert rnn.cells[2].bias.grad is not None and rnn.cells[2].bias.grad.abs().sum() > 0


def test_calibration_sets_each_bias_so_that_its_layer_fires_at_the_target() -> None:
    torch.manual_seed(0)
    rnn = HMLSTM(8, 16, 3, layer_norm=True)  # small LN gains: rates start at 0 or 1
    x = torch.randn(50, 16, 8)
    reached = calibrate_boundary_biases(rnn, x, [0.2, 0.05])
    output, _ = rnn(x)
    assert output.boundary is not None
    rates = output.boundary[..., :2].float().mean(dim=(0, 1)).tolist()
    # layer 2's bias moves layer 1's top-down input a little after layer 1 was set
    assert rates == pytest.approx([0.2, 0.05], abs=0.02)
    assert reached == pytest.approx([0.2, 0.05], abs=0.01)


def test_recentring_moves_each_bias_so_that_its_layer_fires_near_the_target() -> None:
    """From rates of 0 or 1 (small LN gains) to about the targets, one pass per layer and
    round; the bias moves by a pre-activation, so the rate is not exact."""
    torch.manual_seed(0)
    rnn = HMLSTM(8, 16, 3, layer_norm=True)
    x = torch.randn(50, 16, 8)

    def rates() -> list[float]:
        output, _ = rnn(x)
        assert output.boundary is not None
        return output.boundary[..., :2].float().mean(dim=(0, 1)).tolist()

    before = rates()
    recentre_boundary_biases(rnn, x, [0.2, 0.05])
    first = rates()
    assert abs(first[0] - 0.2) < abs(before[0] - 0.2) and abs(first[0] - 0.2) < 0.05
    for _ in range(3):
        recentre_boundary_biases(rnn, x, [0.2, 0.05])
    assert rates() == pytest.approx([0.2, 0.05], abs=0.01)


def test_the_release_holds_the_detectors_above_layer_1_still_until_its_step() -> None:
    torch.manual_seed(0)
    rnn = HMLSTM(4, 5, 4, boundary="soft", layer_norm=True)  # soft: every detector learns
    release = DetectorRelease(rnn, 3)

    def z_rows(step: int) -> list[list[float]]:
        rnn.zero_grad()
        release.at_step(step)
        output, _ = rnn(torch.randn(6, 2, 4))
        output.hidden[-1].square().sum().backward()
        return [[float(p.grad[-1].abs().sum()) for p in (cell.W, cell.U, cell.U_td,
                 cell.bias, cell.ln_recurrent.weight, cell.ln_top_down.bias)]
                for cell in rnn.cells[:3]]

    held = z_rows(2)
    assert all(g > 0 for g in held[0])  # layer 1's detector learns from the start
    assert all(g == 0 for row in held[1:] for g in row)
    assert rnn.cells[1].U.grad is not None and rnn.cells[1].U.grad[:-1].abs().sum() > 0
    assert all(g > 0 for row in z_rows(3) for g in row)
    with pytest.raises(ValueError, match="a step > 0"):
        DetectorRelease(rnn, 0)


def test_a_silent_release_holds_the_layers_above_layer_1_at_a_bias_that_never_fires() -> None:
    torch.manual_seed(0)
    rnn = HMLSTM(4, 5, 4, layer_norm=True)
    for cell in rnn.cells[:3]:
        cell.bias.data[-1] = 50.0  # every layer would fire at every step
    release = DetectorRelease(rnn, 3, silent=True)
    x = torch.randn(40, 3, 4)

    def rates() -> list[float]:
        output, _ = rnn(x)
        assert output.boundary is not None
        return output.boundary[..., :3].float().mean(dim=(0, 1)).tolist()

    assert rates() == [1.0, 0.0, 0.0]
    rnn.cells[1].bias.data[-1] += 0.5  # a controller's move
    release.hold_silent(2)  # before the last silent step
    assert rates() == [1.0, 0.0, 0.0]
    rnn.cells[1].bias.data[-1] = 50.0
    release.hold_silent(3)  # released: left to the caller
    assert rates()[1] == 1.0


def test_calibration_from_a_layer_keeps_the_biases_below_it() -> None:
    torch.manual_seed(0)
    rnn = HMLSTM(8, 16, 3, layer_norm=True)
    x = torch.randn(50, 16, 8)
    rnn.cells[0].bias.data[-1] = 0.3
    reached = calibrate_boundary_biases(rnn, x, [0.2, 0.05], first=1)
    assert float(rnn.cells[0].bias[-1]) == pytest.approx(0.3)
    assert reached == pytest.approx([0.05], abs=0.01)


@pytest.mark.parametrize("targets, gain, error, message", [
    ([0.2], 0.01, "linear", r"targets: one per layer below the top, 2 here, got 1"),
    ([0.2, 1.0], 0.01, "linear", r"targets must lie in \(0, 1\), got \[0.2, 1.0\]"),
    ([0.2, 0.05], 0.0, "linear", r"one positive value, or one per layer below the top "
                                 r"\(2\), got 0.0"),
    ([0.2, 0.05], [0.1, 0.1, 0.1], "linear", r"one per layer below the top \(2\), got "
                                             r"\[0.1, 0.1, 0.1\]"),
    ([0.2, 0.05], 0.01, "log", r"error is linear or logit, got 'log'"),
])
def test_controller_refuses_bad_settings(targets: list[float], gain: float | list[float],
                                         error: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RateController(HMLSTM(4, 5, 3), targets, gain, error)


def test_ratio_loss_is_flat_at_the_target_and_pushes_towards_it() -> None:
    def grad_at(rate: float) -> float:
        boundary = torch.zeros(100, 1, 3)
        boundary[: int(rate * 100), :, 0] = 1.0
        boundary[:, :, 1] = 0.1
        boundary.requires_grad_(True)
        ratio_loss(boundary, [0.2, 0.1]).backward()
        return float(boundary.grad[0, 0, 0]) * 100  # d loss / d rate of layer 1

    assert grad_at(0.2) == pytest.approx(0.0, abs=1e-6)
    assert grad_at(0.5) > 0 > grad_at(0.05)


def test_binomial_prior_is_the_negative_log_pmf_per_step() -> None:
    stats = pytest.importorskip("scipy.stats")
    boundary = torch.zeros(40, 3, 3, dtype=torch.float64)
    counts = [[0, 5], [8, 2], [40, 13]]  # per stream: layer-1 and layer-2 boundaries
    for n, per_layer in enumerate(counts):
        for l, k in enumerate(per_layer):
            boundary[:k, n, l] = 1.0
    targets = [0.2, 0.05]
    expected = sum(-stats.binom.logpmf([c[l] for c in counts], 40, p).mean() / 40
                   for l, p in enumerate(targets))
    assert float(binomial_prior_loss(boundary, targets)) == pytest.approx(expected, rel=1e-12)


def test_binomial_prior_pulls_the_count_towards_t_p_and_its_gradient_is_exact() -> None:
    def grad_at(count: int) -> float:
        boundary = torch.zeros(100, 1, 2, dtype=torch.float64)
        boundary[:count, :, 0] = 1.0
        boundary.requires_grad_(True)
        binomial_prior_loss(boundary, [0.2]).backward()
        return float(boundary.grad[0, 0, 0])  # d loss / d count

    assert grad_at(40) > 0 > grad_at(5)
    soft = torch.rand(30, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.autograd.gradcheck(lambda b: binomial_prior_loss(b, [0.3, 0.1]),
                                    (soft.requires_grad_(True),))


def test_surprisal_prior_is_minus_the_mean_of_z_times_the_standardised_rise() -> None:
    g = torch.Generator().manual_seed(3)
    boundary = torch.rand(12, 5, 3, dtype=torch.float64, generator=g)
    surprisal = torch.rand(12, 5, dtype=torch.float64, generator=g) * 4
    mask = torch.rand(12, 5, generator=g) > 0.3
    surprisal[~mask] = float("inf")  # padding: never read
    s, m, z = surprisal.numpy(), mask.numpy(), boundary.numpy()
    rises, fired = [], []
    for t in range(1, 12):
        for n in range(5):
            if m[t, n] and m[t - 1, n]:
                rises.append(s[t, n] - s[t - 1, n])
                fired.append(z[t, n, :2])
    u = (np.array(rises) - np.mean(rises)) / np.std(rises, ddof=1)
    per_layer = -(np.array(fired) * u[:, None]).mean(axis=0)
    for weights in [(0.5,), (0.5, 0.0), (0.2, 3.0)]:
        w = weights * 2 if len(weights) == 1 else weights
        expected = sum(wl * v for wl, v in zip(w, per_layer, strict=True))
        assert float(surprisal_prior_loss(boundary, surprisal, weights, mask)) == \
            pytest.approx(expected, rel=1e-12)
    # without a mask every step counts; a steady surprisal carries no placement
    s = torch.rand(12, 5, dtype=torch.float64, generator=g)
    rise = s[1:] - s[:-1]
    expected = -(boundary[1:, :, 1] * (rise - rise.mean()) / rise.std()).mean()
    assert float(surprisal_prior_loss(boundary[..., 1:], s, (1.0,))) == \
        pytest.approx(float(expected), rel=1e-12)
    steady = torch.arange(12, dtype=torch.float64)[:, None].expand(12, 5)  # rises all 1
    assert float(surprisal_prior_loss(boundary, steady, (1.0,))) == 0.0


def test_surprisal_prior_raises_the_detectors_where_the_surprisal_rises() -> None:
    boundary = torch.full((8, 2, 2), 0.5, requires_grad=True)
    surprisal = torch.tensor([[1.0, 1.0], [5.0, 5.0]] * 4)  # rises at every other step
    surprisal_prior_loss(boundary, surprisal, (1.0,)).backward()
    grad = boundary.grad[..., 0]
    assert (grad[1::2] < 0).all() and (grad[2::2] > 0).all()  # descent raises z where it rose
    assert (grad[0] == 0).all()  # the first step has no step before it
    assert (boundary.grad[..., 1] == 0).all()  # the top layer has no detector
    assert torch.autograd.gradcheck(
        lambda b: surprisal_prior_loss(b, surprisal.double(), (0.7,)),
        (torch.rand(8, 2, 2, dtype=torch.float64).requires_grad_(True),))


def test_cap_scales_only_rows_above_the_cap() -> None:
    rnn = HMLSTM(4, 5, 3)
    with torch.no_grad():
        rnn.cells[0].U[-1] = 10.0
        rnn.cells[1].W[-1] = 0.01
    small = rnn.cells[1].W[-1].clone()
    other_rows = rnn.cells[0].U[:-1].clone()
    cap_boundary_rows(rnn, 1.9365)
    assert float(rnn.cells[0].U[-1].detach().norm()) == pytest.approx(1.9365)
    assert torch.equal(rnn.cells[1].W[-1], small)
    assert torch.equal(rnn.cells[0].U[:-1], other_rows)


def test_gain_cap_clamps_only_the_boundary_entry_of_each_term_norm() -> None:
    rnn = HMLSTM(4, 5, 3, layer_norm=True)
    with torch.no_grad():
        for cell in rnn.cells:
            for norm in (cell.ln_recurrent, cell.ln_bottom_up, cell.ln_cell):
                norm.weight.fill_(0.9)
        rnn.cells[1].ln_top_down.weight[-1] = -0.7
    cap_boundary_gains(rnn, 0.25)
    for cell in rnn.cells:
        capped = cell.has_boundary
        assert float(cell.ln_recurrent.weight[-1]) == pytest.approx(0.25 if capped else 0.9)
        assert float(cell.ln_bottom_up.weight[0]) == pytest.approx(0.9)
        assert torch.all(cell.ln_cell.weight == 0.9)
    assert float(rnn.cells[1].ln_top_down.weight[-1]) == pytest.approx(-0.25)


def test_detector_shares_count_both_flat_sides_of_the_hard_sigmoid() -> None:
    s = torch.tensor([-3.0, -1.0, 0.0, 0.5, 1.0, 3.0]).reshape(6, 1, 1)  # slope 1: u = (s+1)/2
    dead0, dead1 = detector_shares(s, slope=1.0)
    assert dead0 == [pytest.approx(2 / 6)] and dead1 == [pytest.approx(2 / 6)]


def test_grad_norms_read_only_the_boundary_rows() -> None:
    rnn = HMLSTM(4, 5, 3)
    out, _ = rnn(torch.randn(6, 2, 4))
    out.boundary.sum().backward()  # straight-through: reaches only the z rows' inputs
    norms = boundary_grad_norms(rnn)
    assert len(norms) == 2 and all(n >= 0 for n in norms)
    cell = rnn.cells[0]
    expected = torch.cat([p.grad[-1].reshape(-1) for p in (cell.W, cell.U, cell.U_td, cell.bias)])
    assert norms[0] == pytest.approx(float(expected.norm()))


def test_verdict_names_collapse_and_a_formed_hierarchy() -> None:
    T = 120
    word = np.zeros(T, bool)
    word[4::6] = True
    phrase = np.zeros(T, bool)
    phrase[4::18] = True
    formed = np.zeros((T, 3))
    formed[1:, 0], formed[1:, 1] = word[:-1], phrase[:-1]  # one step after each end
    summary = hierarchy_summary(formed, {"word": word, "phrase": phrase})
    assert summary["f1"]["layer1"]["word"] == {"f1": 1.0, "convention": "separator"}
    text = " ".join(hierarchy_verdict(summary))
    assert text.startswith("A hierarchy formed") and "word ends best (exact F1 1.00" in text
    misplaced = np.zeros((T, 3))
    misplaced[2::6, 0], misplaced[2::18, 1] = 1, 1  # as sparse, at the wrong places
    text = " ".join(hierarchy_verdict(hierarchy_summary(misplaced, {"word": word,
                                                                    "phrase": phrase})))
    assert text.startswith("A hierarchy formed") and "not words or phrases" in text
    collapsed = np.ones((T, 3))
    collapsed[:, 2] = 0
    text = " ".join(hierarchy_verdict(hierarchy_summary(collapsed, {"word": word})))
    assert text.startswith("No hierarchy formed") and "0.0% of the layer updates" in text


def _tiny_run(tmp_path, *overrides: str) -> list[dict]:
    """The train records of a 40-step run of a tiny main job, logged every 10 steps."""
    from hmrnn.cli import main

    code = main(["train", "--no-report", f"run.out_dir={tmp_path / 'run'}",
                 "data.synthetic_chars=20000", "model.hidden_size=16",
                 "model.embedding_size=8", "model.output_size=16", "train.max_steps=40",
                 "train.max_minutes=0", "train.eval_every=40", "train.log_every=10",
                 "train.batch_size=8", "train.seq_len=20", "run.progress=false",
                 "run.threads=1", *overrides])
    assert code == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text()
               .splitlines()]
    return [r for r in records if r.get("kind") == "train"]


def test_a_run_logs_the_instruments_and_runs_the_controller(tmp_path, monkeypatch) -> None:
    seen: list[tuple[list[float], int | None]] = []
    update = RateController.update

    def spy(self, rates, step=None) -> None:
        seen.append((list(rates), step))
        update(self, rates, step)

    monkeypatch.setattr(RateController, "update", spy)
    train = _tiny_run(tmp_path)
    assert train and all(len(r["dead0"]) == 2 and len(r["zgrad"]) == 2 for r in train)
    # the controller saw every step's rates, those the log shows among them
    assert [step for _, step in seen] == list(range(40))
    for record in train:
        assert seen[record["step"] - 1][0] == pytest.approx(record["z"])


def test_a_run_releases_the_detectors_above_layer_1_at_its_step(tmp_path) -> None:
    train = _tiny_run(tmp_path, "train.boundary_release=20")
    # layer 2's detector gets no gradient before (0-based) step 20, then does; a record's
    # "step" counts the steps done; layer 1's learns throughout
    assert [r["zgrad"][1] > 0 for r in train] == [r["step"] > 20 for r in train]
    assert all(r["zgrad"][0] > 0 for r in train)


def test_a_run_calibrates_the_biases_once_after_its_first_step(tmp_path, monkeypatch) -> None:
    import hmrnn.tasks.hooks as hooks

    calls: list[tuple[int, ...]] = []
    calibrate = hooks.calibrate_boundary_biases

    def spy(rnn, input, targets, state=None, first=0):
        calls.append((*input.shape, first))
        return calibrate(rnn, input, targets, state, first=first)

    monkeypatch.setattr(hooks, "calibrate_boundary_biases", spy)
    train = _tiny_run(tmp_path, "train.rate_calibrate=true")
    assert calls == [(20, 8, 8, 0)]  # (T, N, embedding) of the first step's batch, every layer
    assert train


def test_a_silent_release_keeps_layer_2_from_firing_then_sets_it_at_its_target(
    tmp_path, monkeypatch
) -> None:
    import hmrnn.tasks.hooks as hooks

    calls: list[tuple[int, float]] = []
    calibrate = hooks.calibrate_boundary_biases

    def spy(rnn, input, targets, state=None, first=0):
        calls.append((first, float(rnn.cells[0].bias[-1])))
        reached = calibrate(rnn, input, targets, state, first=first)
        assert float(rnn.cells[0].bias[-1]) == calls[-1][1]  # layer 1's bias kept
        return reached

    monkeypatch.setattr(hooks, "calibrate_boundary_biases", spy)
    train = _tiny_run(tmp_path, "train.boundary_release=20", "train.release_silent=true")
    # steps 1-20 (records at 10 and 20): layer 2 silent and its detector without gradient;
    # bisected once, from layer 2 up, after the 20th step; then it fires and learns
    assert [r["z"][1] == 0 for r in train] == [r["step"] <= 20 for r in train]
    assert [r["zgrad"][1] > 0 for r in train] == [r["step"] > 20 for r in train]
    assert [first for first, _ in calls] == [1]


def test_warnings_leave_out_the_layers_held_silent() -> None:
    from hmrnn.tasks.hooks import BoundaryTraining
    from hmrnn.training.config import TrainConfig
    from hmrnn.training.distributed import DistContext

    rnn = HMLSTM(4, 5, 3, layer_norm=True)
    boundaries = BoundaryTraining(rnn, TrainConfig(boundary_release=10, release_silent=True),
                                  DistContext())
    metrics = {"z": [0.2, 0.0]}
    boundaries._step = 8  # the latest step seen (0-based): the next one is still silent
    assert boundaries.warnings(metrics) == []
    assert boundaries.warnings({"z": [0.0, 0.0]})[0].startswith("Layer 1 fires on 0.0%")
    boundaries._step = 9  # released from the next step on
    assert boundaries.warnings(metrics)[0].startswith("Layer 2 fires on 0.0%")


def test_a_run_recentres_the_biases_in_place_of_the_controller_over_its_first_steps(
    tmp_path, monkeypatch
) -> None:
    import hmrnn.tasks.hooks as hooks

    calls: list[str] = []
    recentre, update = hooks.recentre_boundary_biases, RateController.update

    def spy(rnn, input, targets, state=None):
        calls.append("recentre")
        return recentre(rnn, input, targets, state)

    def controller(self, rates, step=None):
        calls.append("controller")
        return update(self, rates, step)

    monkeypatch.setattr(hooks, "recentre_boundary_biases", spy)
    monkeypatch.setattr(RateController, "update", controller)
    assert _tiny_run(tmp_path, "train.rate_recentre=3")
    assert calls == ["recentre"] * 3 + ["controller"] * 37


@pytest.mark.parametrize("control, loss", [("loss", ratio_loss), ("prior", binomial_prior_loss),
                                           ("bias", None), ("none", None)])
def test_the_step_adds_the_chosen_rate_loss(control: str, loss) -> None:
    from hmrnn.tasks.hooks import BoundaryTraining
    from hmrnn.training.config import TrainConfig
    from hmrnn.training.distributed import DistContext

    boundary = torch.rand(20, 4, 3, generator=torch.Generator().manual_seed(1))
    for gains in [(0.3,), (0.3, 0.1)]:  # one weight for both layers, or one each
        train = TrainConfig(rate_control=control, rate_gain=gains, boundary_rate=(0.2, 0.05))
        added = BoundaryTraining(HMLSTM(4, 5, 3), train, DistContext()).loss(boundary)
        if loss is None:
            assert added is None
            continue
        assert added is not None
        # the weighted sum of the two layers' losses, each computed alone
        layers = [float(loss(boundary[..., [l, 2]], [target]))
                  for l, target in enumerate([0.2, 0.05])]
        weights = gains * 2 if len(gains) == 1 else gains
        assert float(added) == pytest.approx(sum(w * v for w, v in zip(weights, layers,
                                                                         strict=True)))
    with pytest.raises(ValueError, match="one per boundary layer"):
        ratio_loss(boundary, [0.2, 0.05], [0.1, 0.2, 0.3])


def test_the_step_adds_the_surprisal_prior_to_the_rate_loss() -> None:
    from hmrnn.tasks.hooks import BoundaryTraining
    from hmrnn.training.config import TrainConfig
    from hmrnn.training.distributed import DistContext

    g = torch.Generator().manual_seed(2)
    boundary, surprisal = torch.rand(20, 4, 3, generator=g), torch.rand(20, 4, generator=g)
    for control in ["loss", "bias"]:
        train = TrainConfig(rate_control=control, rate_gain=(0.3,), boundary_rate=(0.2, 0.05),
                            surprisal_prior=(0.4, 0.0))
        hooks = BoundaryTraining(HMLSTM(4, 5, 3), train, DistContext())
        assert hooks.uses_surprisal
        added = hooks.loss(boundary, surprisal)
        prior = float(surprisal_prior_loss(boundary, surprisal, (0.4, 0.0)))
        rate = float(ratio_loss(boundary, [0.2, 0.05], [0.3])) if control == "loss" else 0.0
        assert added is not None and float(added) == pytest.approx(prior + rate)
        with pytest.raises(ValueError, match="surprisal"):
            hooks.loss(boundary)
    off = BoundaryTraining(HMLSTM(4, 5, 3), TrainConfig(), DistContext())
    assert not off.uses_surprisal and off.loss(boundary, surprisal) is None


def test_a_run_with_the_surprisal_prior_trains_and_moves_layer_1_toward_surprise(
        tmp_path, monkeypatch) -> None:
    import hmrnn.tasks.hooks as hooks

    seen: list[tuple[float, float]] = []

    def spy(boundary, surprisal, weights, mask=None):
        seen.append((float(surprisal.min()), float(surprisal.max())))
        assert surprisal.shape == boundary.shape[:2] and not surprisal.requires_grad
        return surprisal_prior_loss(boundary, surprisal, weights, mask)

    monkeypatch.setattr(hooks, "surprisal_prior_loss", spy)
    train = _tiny_run(tmp_path, "train.surprisal_prior=0.5,0")
    assert len(seen) == 40 and all(0 <= low < high for low, high in seen)
    assert all(math.isfinite(r["loss"]) for r in train)


def test_the_separator_warmup_gives_layer_1_the_characters_after_words_then_lets_it_decide(
        tmp_path, monkeypatch) -> None:
    from hmrnn.model.charlm import CharLM
    from hmrnn.tasks.charlm.build import corpus_from_config
    from hmrnn.training.config import Config, apply_overrides

    vocab = corpus_from_config(apply_overrides(
        Config(), {"data.synthetic_chars": "20000"}).data).vocab
    calls: list[bool] = []
    forward = CharLM.forward

    def spy(self, x, state=None, **kwargs):
        out = forward(self, x, state, **kwargs)
        given = kwargs.get("boundaries")
        calls.append(given is not None)
        if given is not None:
            assert given.shape == (*x.shape, 2) and given[..., 1].isnan().all()
            assert torch.equal(out.rnn.boundary[..., 0], given[..., 0])  # layer 1 as given
            text = np.array([list(vocab.decode(column)) for column in x.t().tolist()]).T
            word = np.char.isalnum(text)  # (T, N)
            after = ~word[1:] & word[:-1]  # the steps with the step before in the window
            np.testing.assert_array_equal(given[1:, :, 0].numpy(), after.astype(np.float32))
        return out

    monkeypatch.setattr(CharLM, "forward", spy)
    _tiny_run(tmp_path, "train.separator_warmup=20")
    assert calls[:20] == [True] * 20  # training: given for 20 steps
    assert len(calls) > 40 and not any(calls[20:])  # then, and in evaluation, they decide


def test_the_controller_is_told_the_global_step_for_its_warmup() -> None:
    from hmrnn.tasks.hooks import BoundaryTraining
    from hmrnn.training.config import TrainConfig
    from hmrnn.training.distributed import DistContext

    rnn = HMLSTM(4, 5, 3)
    train = TrainConfig(rate_gain=(1.0,), boundary_rate=(0.2, 0.05), rate_warmup=100)
    hooks = BoundaryTraining(rnn, train, DistContext())
    start = float(rnn.cells[1].bias[-1].detach())
    for step in (0, 200):  # layer 2 at layer 1's target: on target at 0, too high at 200
        hooks.observe(step, {"z": [0.2, 0.2]}, lambda: torch.zeros(1), None, None)  # type: ignore[arg-type]
        hooks.end_step(True)
        moved = float(rnn.cells[1].bias[-1].detach()) - start
        assert abs(moved) < 1e-9 if step == 0 else moved == pytest.approx(-0.0740, abs=1e-4)

"""Tests of the handwriting task and its command line (hmrnn.tasks.handwriting.task / .cli).

Every test writes its own small stroke set in the npz format of the IAM-OnDB reader;
none reads the licensed data.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from hmrnn.cli import main
from hmrnn.tasks.handwriting import data as hw
from hmrnn.tasks.handwriting.model import (
    EvalTotals,
    build_handwriting_model,
    evaluation_totals,
    offset_boundaries,
    sequence_log_likelihood,
)
from hmrnn.tasks.handwriting.plots import boundary_agreement
from hmrnn.tasks.handwriting.task import (
    HandwritingTask,
    load_handwriting_checkpoint,
    load_handwriting_data,
)
from hmrnn.training.checkpoint import load_checkpoint, save_checkpoint
from hmrnn.training.config import Config, apply_overrides
from hmrnn.training.distributed import DistContext, setup, teardown

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = [
    "model.hidden_size=6,5,4", "model.output_size=7", "model.mixture_components=3",
    "train.batch_size=3", "train.seq_len=20", "train.eval_every=2", "train.eval_batch_size=4",
    "train.lr=0.01", "data.fractions=0.6,0.2,0.2", "run.progress=false",
    "run.tensorboard=false",
]


def stroke_line(rng: np.random.Generator, num_points: int) -> np.ndarray:
    """int16 absolute (x, y, pen_up): strokes of 3-12 small moves, a jump between strokes."""
    moves = rng.normal(scale=3.0, size=(num_points, 2)) + [3.0, 0.0]
    pen = np.zeros(num_points)
    t = int(rng.integers(3, 12))
    while t < num_points - 1:
        pen[t] = 1
        moves[t + 1] += rng.normal(scale=30.0, size=2)
        t += int(rng.integers(3, 12))
    pen[-1] = 1
    xy = np.round(np.cumsum(moves, axis=0) + [100.0, 500.0])
    return np.column_stack([xy, pen]).astype(np.int16)


def write_npz(path: Path, lengths: list[int], seed: int = 0) -> Path:
    """A stroke set in the format of iamondb_lines.npz (ids, offsets, points)."""
    rng = np.random.default_rng(seed)
    lines = [stroke_line(rng, n) for n in lengths]
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in lines])]).astype(np.int64)
    ids = np.array([f"f{i:02d}-000-01" for i in range(len(lines))])
    np.savez(path, ids=ids, offsets=offsets, points=np.concatenate(lines))
    return path


@pytest.fixture
def strokes(tmp_path: Path) -> Path:
    """10 lines of 300-330 points (split 6 / 2 / 2) and one short line that is dropped."""
    lengths = [int(n) for n in np.random.default_rng(1).integers(300, 330, size=10)]
    return write_npz(tmp_path / "strokes.npz", [*lengths[:4], 120, *lengths[4:]])


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["handwriting", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def train(data: Path, out_dir: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    flags = [x for x in extra if x.startswith("--")]  # argparse: flags before overrides
    overrides = [x for x in extra if not x.startswith("--")]
    code, out, err = run(
        ["train", "--data", str(data), *flags, *TINY, f"run.out_dir={out_dir}", *overrides],
        capsys,
    )
    assert code == 0, err
    return out


def tiny_config(**overrides: str) -> Config:
    base = {k: v for k, v in (x.split("=", 1) for x in TINY)}
    return apply_overrides(Config(), {**base, **overrides})


def assert_png(path: Path) -> None:
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_MAGIC
    image = imread(path)
    assert (image[..., :3].min(axis=-1) < 0.5).sum() > 50  # something was drawn


# ------------------------------------------------------------------------------- the task


def test_batches_are_a_function_of_the_step(strokes: Path) -> None:
    data, split = load_handwriting_data(strokes, (0.6, 0.2, 0.2))
    assert split["sizes"] == [6, 2, 2] and split["seed"] == hw.SPLIT_SEED
    config = tiny_config(**{"train.batch_size": "2", "train.seq_len": "9"})
    task = HandwritingTask(build_handwriting_model(config.model), data, config)
    assert task.steps_per_epoch == 3 and task.symbols_per_step == 2 * 9
    again = HandwritingTask(task.model, data, config)
    for step in (4, 0, 7):  # out of order: nothing may depend on the previous call
        for a, b in zip(task.batch(step), again.batch(step), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    inputs, targets, mask = task.batch(0)
    assert inputs.shape == (9, 2, 3) and bool(mask.all())
    torch.testing.assert_close(inputs[1:], targets[:-1], rtol=0, atol=0)  # a window of a line

    def origins(epoch: int) -> list[tuple[int, int]]:
        """(line, start) of every window of the epoch, found by exact search."""
        found = []
        for k in range(3):
            x, y, _ = task.batch(epoch * 3 + k)
            for n in range(2):
                window = torch.cat([x[:, n], y[-1:, n]]).numpy()  # the 10 offsets read
                found += [
                    (i, t) for i, line in enumerate(data.train)
                    for t in range(len(line) - 9) if np.array_equal(line[t : t + 10], window)
                ]
        return found

    first, second = origins(0), origins(1)
    assert sorted(i for i, _ in first) == list(range(6))  # every line once per epoch
    assert sorted(i for i, _ in second) == list(range(6))
    assert first != second  # a new order and new windows every epoch
    halves = [
        HandwritingTask(task.model, data, config, DistContext(rank, 2)).batch(5)[0]
        for rank in (0, 1)
    ]
    torch.testing.assert_close(torch.cat(halves, dim=1), task.batch(5)[0], rtol=0, atol=0)


def test_training_loss_is_the_mean_nll_per_real_step(strokes: Path) -> None:
    data, _ = load_handwriting_data(strokes, (0.6, 0.2, 0.2))
    config = tiny_config(**{"train.seq_len": "0"})  # whole lines: the batch is padded
    torch.manual_seed(0)
    task = HandwritingTask(build_handwriting_model(config.model), data, config)
    loss, stats = task.train_loss(task.model, 1)
    inputs, targets, mask = task.batch(1)
    assert not bool(mask.all())  # lines of different lengths
    per_line = sequence_log_likelihood(task.model, inputs, targets, mask)
    assert loss.item() == pytest.approx(-per_line.sum().item() / int(mask.sum()), rel=1e-6)
    assert len(stats["z"]) == 2 and all(0.0 <= r <= 1.0 for r in stats["z"])


def test_the_surprisal_prior_reads_each_real_points_nll(strokes: Path, monkeypatch) -> None:
    import hmrnn.tasks.hooks as hooks
    from hmrnn.model.boundary_control import surprisal_prior_loss

    data, _ = load_handwriting_data(strokes, (0.6, 0.2, 0.2))
    config = tiny_config(**{"train.seq_len": "0", "train.rate_control": "none",
                            "train.surprisal_prior": "0.3"})
    torch.manual_seed(0)
    task = HandwritingTask(build_handwriting_model(config.model), data, config)
    seen = {}

    def spy(boundary, surprisal, weights, mask=None):
        seen.update(surprisal=surprisal, mask=mask)
        return surprisal_prior_loss(boundary, surprisal, weights, mask)

    monkeypatch.setattr(hooks, "surprisal_prior_loss", spy)
    loss, _ = task.train_loss(task.model, 1)
    inputs, targets, mask = task.batch(1)
    assert torch.equal(seen["mask"], mask) and not bool(mask.all())
    nll = -sequence_log_likelihood(task.model, inputs, targets, mask).sum()
    assert float(seen["surprisal"][mask].sum()) == pytest.approx(float(nll), rel=1e-5)
    loss.backward()  # the prior reaches the detectors
    assert all(torch.isfinite(p.grad).all() for p in task.model.parameters() if p.grad is not None)


def test_the_separator_warmup_is_refused_for_pen_strokes(strokes: Path) -> None:
    from hmrnn.training.config import ConfigError

    data, _ = load_handwriting_data(strokes, (0.6, 0.2, 0.2))
    config = tiny_config(**{"train.separator_warmup": "5"})
    with pytest.raises(ConfigError, match="needs text"):
        HandwritingTask(build_handwriting_model(config.model), data, config)


def test_eval_chars_caps_the_validation_lines(strokes: Path) -> None:
    data, _ = load_handwriting_data(strokes, (0.6, 0.2, 0.2))
    first = len(data.valid[0]) - 1  # the points the first valid line predicts
    torch.manual_seed(0)
    model = build_handwriting_model(tiny_config().model)
    whole = HandwritingTask(model, data, tiny_config())
    assert whole.evaluate("valid")["num_sequences"] == 2
    for cap in (first, 1):  # whole lines only, and at least one
        capped = HandwritingTask(model, data, tiny_config(**{"train.eval_chars": str(cap)}))
        metrics = capped.evaluate("valid")
        alone = evaluation_totals(model, data.valid[:1], 4).summary(data.normalizer)
        assert metrics["num_sequences"] == 1
        assert metrics["loss"] == pytest.approx(alone["nats_per_step"], rel=1e-6)
    assert capped.summarize("test")["num_sequences"] == 2  # the report's test: whole


def test_pen_up_counts_follow_the_line_alignment(strokes: Path) -> None:
    data, _ = load_handwriting_data(strokes, (0.6, 0.2, 0.2))
    torch.manual_seed(3)
    # without layer norm, whose small initial gains (docs/model.md decision 7) leave an
    # untrained stack's boundaries at their biases' signs: layer 2 must fire here
    model = build_handwriting_model(tiny_config(**{"model.layer_norm": "false"}).model)
    lines = data.valid + data.test
    # One line at a time, as offset_boundaries reads it: in a batch the last-bit rounding
    # differs, and this untrained stack is chaotic enough (even in float64) that such
    # differences move boundaries after a few hundred steps.
    totals = evaluation_totals(model, lines, batch_size=1)
    expected = np.zeros(3, dtype=int)
    for offsets in lines:  # line by line, on points 1 .. P - 2 (point 0 and P - 1 not read)
        z = offset_boundaries(model, offsets)[:, 1]  # (P,)
        pen_up = np.concatenate([[0.0], offsets[:, 2]])  # (P,)
        prf = boundary_agreement(z[1:-1], pen_up[1:-1], tolerance=1)
        expected += (prf.tp, prf.fp, prf.fn)
    assert totals.penup == tuple(expected) and expected[0] > 0 and expected[1] > 0
    parts = evaluation_totals(model, lines[:1], 1) + evaluation_totals(model, lines[1:], 1)
    assert parts.steps == totals.steps and parts.penup == totals.penup
    assert parts.loglik == pytest.approx(totals.loglik, rel=1e-6)
    np.testing.assert_allclose(parts.fires, totals.fires, rtol=1e-9)
    back = EvalTotals.from_array(totals.to_array())
    assert back == totals
    summary = totals.summary(data.normalizer)
    tp, fp, fn = totals.penup
    assert summary["penup_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))


def _ddp_grads(context: DistContext, folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Gradient of one training step of whole (padded) lines, and the valid summary."""
    data, split = load_handwriting_data(folder / "strokes.npz", (0.6, 0.2, 0.2))
    # An LSTM: a float rounding difference cannot flip a boundary and part the runs.
    config = tiny_config(**{"model.rnn": "lstm", "model.layer_norm": "false",
                            "train.batch_size": "4", "train.seq_len": "0",
                            "train.eval_batch_size": "1"})
    torch.manual_seed(0)
    model = build_handwriting_model(config.model).double()
    task = HandwritingTask(model, data, config, context, split)
    wrapped = context.wrap(task.model)  # kept alive: DDP averages during backward
    loss, _ = task.train_loss(wrapped, 0)
    loss.backward()
    return {n: p.grad for n, p in task.model.named_parameters()}, task.summarize("valid")


def _ddp_worker(rank: int, port: int, folder: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    context = setup("cpu")
    try:
        grads, summary = _ddp_grads(context, Path(folder))
        torch.save({"grads": grads, "summary": summary}, Path(folder) / f"rank{rank}.pt")
    finally:
        teardown(context)


def test_two_processes_step_and_evaluate_like_one(strokes: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    mp.start_processes(_ddp_worker, args=(port, str(strokes.parent)), nprocs=2,
                       start_method="spawn")
    ranks = [torch.load(strokes.parent / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    grads, summary = _ddp_grads(DistContext(), strokes.parent)
    inputs, _, mask = HandwritingTask(  # the two halves of the batch differ in length
        build_handwriting_model(tiny_config().model),
        load_handwriting_data(strokes, (0.6, 0.2, 0.2))[0],
        tiny_config(**{"train.batch_size": "4", "train.seq_len": "0"}),
    ).batch(0)
    assert int(mask[:, :2].sum()) != int(mask[:, 2:].sum())
    for name, grad in grads.items():
        torch.testing.assert_close(ranks[0]["grads"][name], grad, rtol=1e-7, atol=1e-9)
    for key in ("loglik_per_sequence", "num_steps", "num_sequences"):
        assert ranks[1]["summary"][key] == pytest.approx(summary[key], rel=1e-12)


# --------------------------------------------------------------------- the command line


def test_train_eval_sample_draw_end_to_end(
    strokes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    out = train(strokes, run_dir, capsys, "train.max_steps=4")
    assert "data: 6 / 2 / 2 lines" in out
    assert "test (best checkpoint): average log-likelihood" in out
    assert "layer-2 boundaries against pen-ups" in out
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    tested = [r for r in records if r["kind"] == "test"]
    assert len(tested) == 1 and tested[0]["num_sequences"] == 2 and tested[0]["step"] == 4

    checkpoint = load_checkpoint(run_dir / "last.pt")
    assert checkpoint["kind"] == "handwriting" and checkpoint["trainer"]["step"] == 4
    assert checkpoint["split"]["sizes"] == [6, 2, 2]
    assert checkpoint["config"]["data"]["data_dir"] == str(strokes.resolve())

    # --data from the checkpoint; one line at a time to compare with lines scored alone
    # (batching changes the rounding, which moves HM-LSTM boundaries: see test above)
    code, out, err = run(["eval", str(run_dir / "last.pt"), "--json", "--batch-size", "1"],
                         capsys)
    assert code == 0, err
    report = json.loads(out)
    model, normalizer, _, _ = load_handwriting_checkpoint(run_dir / "last.pt")
    data, _ = load_handwriting_data(strokes, (0.6, 0.2, 0.2))
    with torch.no_grad():
        alone = [sequence_log_likelihood(model, *hw.pad_batch([s])).item() for s in data.test]
    assert report["num_sequences"] == 2
    assert report["loglik_per_sequence"] == pytest.approx(np.mean(alone), rel=1e-5)
    raw = np.mean(alone) - report["num_steps"] / 2 * normalizer.log_jacobian()
    assert report["loglik_per_sequence_raw"] == pytest.approx(raw, rel=1e-5)
    assert 0.0 <= report["penup_f1"] <= 1.0 and len(report["boundary_rates"]) == 2

    sample = tmp_path / "pics" / "sample.png"
    code, out, err = run(["sample", str(run_dir), "--out", str(sample), "--steps", "60",
                          "--bias", "0.5"], capsys)
    assert code == 0 and "wrote" in out, err
    assert_png(sample)
    primed = tmp_path / "primed.png"
    code, out, err = run(["sample", str(run_dir), "--out", str(primed), "--steps", "30",
                          "--prime-line", "1"], capsys)
    assert code == 0 and "primed with f" in out, err
    assert primed.read_bytes() != sample.read_bytes()

    line = tmp_path / "line.png"  # without a checkpoint: the default split fractions
    many = write_npz(tmp_path / "many.npz", [305] * 30, seed=2)
    code, out, err = run(["draw", "--data", str(many), "--line", "0", "--out", str(line)],
                         capsys)
    assert code == 0 and "305 points" in out, err
    assert_png(line)
    by_id = tmp_path / "by_id.png"  # with one: its split, and a line id from any split
    code, out, err = run(["draw", str(run_dir), "--line", data.test_ids[1], "--out",
                          str(by_id)], capsys)
    assert code == 0 and data.test_ids[1] in out, err
    assert_png(by_id)
    fig5 = tmp_path / "fig5.png"
    code, out, err = run(["draw", str(run_dir), "--line", "0", "--segments", "--out",
                          str(fig5)], capsys)
    assert code == 0, err
    assert_png(fig5)
    pen_up = np.concatenate([[0.0], data.valid[0][:, 2]])
    prf = boundary_agreement(offset_boundaries(model, data.valid[0])[:, 1], pen_up)
    assert f"F1 {prf.f1:.3f} (tp {prf.tp}, fp {prf.fp}, fn {prf.fn})" in out


def test_resume_equals_uninterrupted(
    strokes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train(strokes, tmp_path / "a", capsys, "train.max_steps=5", "--no-report")
    train(strokes, tmp_path / "b", capsys, "train.max_steps=3", "--no-report")
    out = train(strokes, tmp_path / "b", capsys, "--resume", "train.max_steps=5", "--no-report")
    assert "resuming" in out
    a, b = (load_checkpoint(tmp_path / x / "last.pt") for x in "ab")
    assert a["trainer"]["step"] == b["trainer"]["step"] == 5
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    for k, state in a["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg_sq"], b["optimizer"]["state"][k]["exp_avg_sq"])
    assert a["normalizer"] == b["normalizer"] and a["split"] == b["split"]


def fake_checkpoint(path: Path, data_path: Path, rnn: str, kind: str = "handwriting") -> Path:
    """A checkpoint as training writes it, without training."""
    data, split = load_handwriting_data(data_path, (0.6, 0.2, 0.2))
    config = tiny_config(**{"model.rnn": rnn, "data.data_dir": str(data_path)})
    model = build_handwriting_model(config.model)
    return save_checkpoint(path, {
        "kind": kind, "config": config.to_dict(), "model": model.state_dict(),
        "normalizer": data.normalizer.to_dict(), "split": split,
    })


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "run.out_dir={tmp}/r"], "no handwriting data given: pass --data"),
        (["train", "--data", "{tmp}/missing.npz"], "does not exist"),
        (["train", "--data", "{data}", "train.batch_size=7", "data.fractions=0.6,0.2,0.2"],
         "the training split has 6 lines, fewer than train.batch_size=7"),
        (["train", "--data", "{data}"], "cannot be split by data.fractions"),
        (["train", "--data", "{data}", "train.batchsize=1"], "did you mean train.batch_size"),
        (["train", "--data", "{data}", "--resume", "run.out_dir={tmp}/none"], "--resume"),
        (["eval", "{tmp}/strokes.npz"], "cannot be read"),
        (["eval", "{charlm}"], "model, not 'handwriting'"),
        (["eval", "{hm}", "--data", "{other}"], "does not hold the lines this model"),
        (["draw", "--data", "{data}", "--line", "0", "--segments", "--out", "{tmp}/x.png"],
         "--segments draws a model's boundaries"),
        (["draw", "{hm}", "--line", "9", "--out", "{tmp}/x.png"], "line 9 does not exist"),
        (["draw", "{hm}", "--line", "z99-000-01", "--out", "{tmp}/x.png"], "no line has the id"),
        (["draw", "{hm}", "--line", "0", "--out", "{tmp}/x.jpg"], "image format"),
        (["draw", "{lstm}", "--line", "0", "--segments", "--out", "{tmp}/x.png"],
         "no boundary detectors"),
        (["sample", "{hm}", "--out", "{tmp}/x.png", "--bias", "-1"], "--bias must be >= 0"),
        (["sample", "{hm}", "--out", "{tmp}/x.png", "--steps", "0"], "--steps must be positive"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], message: str, strokes: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    names = {
        "tmp": tmp_path, "data": strokes,
        "other": write_npz(tmp_path / "other.npz", [310] * 10, seed=5),
        "hm": fake_checkpoint(tmp_path / "hm.pt", strokes, "hmlstm"),
        "lstm": fake_checkpoint(tmp_path / "lstm.pt", strokes, "lstm"),
        "charlm": fake_checkpoint(tmp_path / "charlm.pt", strokes, "hmlstm", kind="charlm"),
    }
    code, _, err = run([a.format(**names) for a in argv], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("hmrnn handwriting ")
    assert message in err

"""The CUDA path against the CPU: every model kind computes the same function on a GPU,
training on a GPU resumes like an uninterrupted run, and a GPU run's checkpoint serves the
CPU commands. Skipped where no CUDA GPU is present (CI has none); docs/benchmarks.md names
the GPU these ran on."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import RESUME_SETTINGS, tiny_trainer, write_words

from hmrnn.analysis.curves import read_metrics
from hmrnn.cli import main
from hmrnn.cli.bench import bench_model, cuda_graphed, training_step
from hmrnn.cli.bench import main as bench_main
from hmrnn.model.graphed import GraphedStack, graph_stacks
from hmrnn.model.hmlstm import HMLSTM
from hmrnn.model.types import detach_state
from hmrnn.tasks.charlm.build import build_charlm
from hmrnn.tasks.handwriting.model import HandwritingModel, sample_strokes
from hmrnn.training.checkpoint import load_checkpoint
from hmrnn.training.config import ModelConfig
from hmrnn.training.distributed import DistContext
from hmrnn.training.trainer import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")
KINDS = [("hmlstm", True), ("hmlstm", False), ("lstm", False), ("lstm", True),
         ("cwrnn", True), ("cwrnn", False)]


@pytest.mark.parametrize(("rnn", "layer_norm"), KINDS)
def test_every_model_computes_the_same_on_cuda_in_float64(rnn: str, layer_norm: bool) -> None:
    """Loss, logits, boundaries and every gradient of a char LM: CUDA float64 = CPU float64."""
    config = ModelConfig(rnn=rnn, hidden_size=(6, 5, 4), embedding_size=4, output_size=7,
                         layer_norm=layer_norm)
    torch.manual_seed(0)
    cpu = build_charlm(config, 9).double()
    with torch.no_grad():  # wide enough that HM-LSTM boundaries both fire and not
        for p in cpu.parameters():
            p.uniform_(-1.0, 1.0)
    gpu = build_charlm(config, 9).double().to(CUDA)
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randint(0, 9, (12, 3), generator=torch.Generator().manual_seed(1))
    results = []
    for model, device in ((cpu, torch.device("cpu")), (gpu, CUDA)):
        out = model(x.to(device))
        loss = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), x.to(device).flatten())
        loss.backward()
        boundary = getattr(out.rnn, "boundary", None)
        results.append((loss.detach().cpu(), out.logits.detach().cpu(),
                        None if boundary is None else boundary.detach().cpu(),
                        [p.grad.cpu() for p in model.parameters()]))
    (loss_c, logits_c, z_c, grads_c), (loss_g, logits_g, z_g, grads_g) = results
    torch.testing.assert_close(loss_g, loss_c, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(logits_g, logits_c, rtol=1e-10, atol=1e-12)
    if z_c is not None:
        assert torch.equal(z_g, z_c) and 0 < float(z_c[..., :-1].mean()) < 1
    for (name, _), a, b in zip(cpu.named_parameters(), grads_g, grads_c, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=name)


def test_float32_fast_loop_on_cuda_follows_the_cpu() -> None:
    """The path training takes (float32, fast loop) at a realistic width: the GPU within
    float rounding of the CPU, on every sequence whose boundaries came out the same (a
    pre-activation at the threshold may round the other way, and a flipped boundary turns
    an UPDATE into a FLUSH: that sequence then parts ways, as on any two machines)."""
    torch.manual_seed(0)
    cpu = HMLSTM(16, 64, 3, layer_norm=True)
    gpu = HMLSTM(16, 64, 3, layer_norm=True).to(CUDA)
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(12, 32, 16)
    out_c, _ = cpu(x)
    out_g, _ = gpu(x.to(CUDA))
    same = (out_g.boundary.cpu() == out_c.boundary).all(dim=2).all(dim=0)  # (N,)
    assert same.float().mean() > 0.5
    for a, b in zip(out_g.hidden, out_c.hidden, strict=True):
        a, b = a.detach().cpu()[:, same], b.detach()[:, same]
        assert float((a - b).norm() / b.norm()) < 1e-5


def _trainer(folder: Path, **overrides: str) -> Trainer:
    settings = RESUME_SETTINGS | {"run.device": "cuda",
                                  "run.out_dir": str(folder / "run")} | overrides
    return tiny_trainer(write_words(folder, 400), settings, (0.9, 0.05, 0.05),
                        DistContext(device=CUDA))


@pytest.mark.parametrize("boundary", ["sample", "step"])
def test_cuda_training_resumes_like_uninterrupted(tmp_path: Path, boundary: str) -> None:
    """Sampled boundaries draw from the CUDA generator, whose state the checkpoint keeps;
    step boundaries replay CUDA graphs (run.cuda_graph), captured anew after the resume."""
    mode = {"model.boundary": boundary}
    straight = _trainer(tmp_path / "a", **{"train.max_steps": "14"}, **mode)
    straight.fit()
    first = _trainer(tmp_path / "b", **{"train.max_steps": "6"}, **mode)
    first.fit()
    resumed = _trainer(tmp_path / "b", **{"train.max_steps": "14"}, **mode)
    resumed.restore(load_checkpoint(first.last_path))
    resumed.fit()
    for (name, a), (_, b) in zip(straight.model.state_dict().items(),
                                 resumed.model.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7,
                                   msg=lambda m, name=name: f"{name}: {m}")
    assert replace(straight.state, elapsed=0, wall=0, best_saved=0) == replace(
        resumed.state, elapsed=0, wall=0, best_saved=0)


def test_cli_trains_on_cuda_and_the_cpu_commands_read_its_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    common = [f"data.corpus={write_words(tmp_path, 400)}", f"run.out_dir={out}", "run.device=cuda",
              "model.hidden_size=8", "model.embedding_size=4", "model.output_size=8",
              "train.batch_size=4", "train.seq_len=10", "train.eval_every=5",
              "train.max_minutes=0", "run.progress=false", "run.tensorboard=false"]
    assert main(["train", *common, "train.max_steps=5"]) == 0
    assert "cuda" in capsys.readouterr().out
    assert main(["eval", str(out), "--split", "valid", "--json"]) == 0
    assert '"bpc"' in capsys.readouterr().out
    assert main(["sample", str(out), "--length", "20"]) == 0
    assert capsys.readouterr().out.strip()


def test_handwriting_sampling_on_cuda() -> None:
    torch.manual_seed(0)
    model = HandwritingModel(HMLSTM(3, [6, 5], 2), embedding_size=7,
                             num_components=4).to(CUDA)
    draws = [sample_strokes(model, 8, bias=0.5, num_samples=2,
                            generator=torch.Generator(CUDA).manual_seed(0)) for _ in range(2)]
    assert draws[0].device.type == "cuda" and draws[0].shape == (8, 2, 3)
    assert torch.equal(draws[0], draws[1])
    assert set(draws[0][..., 2].unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("layer_norm", [False, True])
def test_a_cuda_graph_of_the_training_step_trains_like_eager_steps(layer_norm: bool) -> None:
    """The fast loop launches no host-synchronising work, so a whole training step can be
    captured; 3 warm-up steps and 2 replays land where 5 eager steps do."""
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(bench_model("hmlstm", 11, 8, [16, 12, 10], 16, layer_norm, CUDA))
    g = torch.Generator().manual_seed(1)
    x, y = (torch.randint(11, (20, 4), generator=g).to(CUDA) for _ in range(2))
    eager = training_step(models[0], torch.optim.Adam(models[0].parameters()), x, y)
    for _ in range(5):
        eager()
    replay = cuda_graphed(training_step(
        models[1], torch.optim.Adam(models[1].parameters(), capturable=True), x, y), CUDA)
    replay()
    replay()
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6,
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize(("kind", "layer_norm"), [("hmlstm", False), ("hmlstm", True),
                                                ("lstm", True), ("lstm", False)])
def test_replayed_cuda_graphs_of_a_stack_train_like_eager_calls(
    kind: str, layer_norm: bool,
) -> None:
    """A char LM whose stack replays CUDA graphs (hmrnn.model.graphed) takes the steps the
    eager one takes, the slope changed and the state carried between steps: one capture,
    then a replay at every step."""
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(bench_model(kind, 11, 8, [16, 12, 10], 16, layer_norm, CUDA))
    (graphed,) = graph_stacks(models[1])
    optimizers = [torch.optim.Adam(m.parameters(), lr=0.01) for m in models]
    g = torch.Generator().manual_seed(1)
    states: list[Any] = [None, None]
    for step in range(4):
        x, y = (torch.randint(11, (20, 4), generator=g).to(CUDA) for _ in range(2))
        results = []
        for i, (model, optimizer) in enumerate(zip(models, optimizers, strict=True)):
            if isinstance(model.rnn, HMLSTM):
                model.rnn.set_slope(1.0 + 0.5 * step)
            out = model(x, states[i])
            loss = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), y.flatten())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            states[i] = detach_state(out.state)
            results.append((loss.detach(), out.rnn.boundary))
        (loss_e, z_e), (loss_g, z_g) = results
        torch.testing.assert_close(loss_g, loss_e, rtol=1e-5, atol=1e-6)
        assert (z_e is None and z_g is None) or torch.equal(z_g, z_e)
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5,
                                   msg=lambda m, name=name: f"{name}: {m}")
    assert graphed.failure is None and graphed.captured == 1 and graphed.replays == 4


@pytest.mark.parametrize(("kind", "layer_norm"),
                         [("hmlstm", True), ("lstm", True), ("lstm", False)])
def test_evaluation_replays_forward_graphs_like_eager_calls(kind: str, layer_norm: bool) -> None:
    """Windows of a text without autograd: a stack replaying forward-only graphs gives
    each window's own logits and boundaries (copies, not the graph's buffers), the same as
    eager calls; the shorter last window gets its own graph."""
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(bench_model(kind, 11, 8, [16, 12, 10], 16, layer_norm, CUDA).eval())
    (graphed,) = graph_stacks(models[1])
    text = torch.randint(11, (45, 4), generator=torch.Generator().manual_seed(2)).to(CUDA)
    results = []
    with torch.no_grad():
        for model in models:
            state, logits, zs = None, [], []
            for window in text.split(20):  # 20, 20, 5
                out = model(window, state)
                state = out.state
                logits.append(out.logits)
                zs.append(out.rnn.boundary)
            results.append((torch.cat(logits), None if zs[0] is None else torch.cat(zs)))
    (logits_e, z_e), (logits_g, z_g) = results
    torch.testing.assert_close(logits_g, logits_e, rtol=1e-5, atol=1e-6)
    assert (z_e is None and z_g is None) or torch.equal(z_g, z_e)
    assert graphed.failure is None and graphed.captured == 2 and graphed.replays == 3


def test_the_trainer_replays_cuda_graphs_and_trains_as_without(tmp_path: Path) -> None:
    runs = {}
    for graphs in ("true", "false"):
        trainer = _trainer(tmp_path / graphs, **{"train.max_steps": "10", "model.boundary": "step",
                                                 "run.cuda_graph": graphs})
        trainer.fit()
        runs[graphs] = trainer
    for (name, a), b in zip(runs["false"].model.named_parameters(),
                            runs["true"].model.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5,
                                   msg=lambda m, name=name: f"{name}: {m}")
    events = {r["event"]: r["message"] for r in read_metrics(tmp_path / "true" / "run")
              if r.get("kind") == "event"}
    assert "HMLSTM replays CUDA graphs (1 captured)" in events["cuda_graph"]
    assert not isinstance(runs["true"].model.rnn.forward, GraphedStack)  # removed after fit


def test_bench_cuda_graph_rows(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--device", "cuda", "--cuda-graph", "--suite", "train", "--train", "8:2",
            "--layers", "2", "--embedding", "4", "--vocab", "7", "--seq-len", "5",
            "--repeats", "1", "--warmup", "0"]
    assert bench_main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("| train |") == 4 and out.count("| forward |") == 4
    assert "replay CUDA graphs" in out

"""hmrnn.cli.bench on tiny models: the table, the targets and the checkpoint path, never timed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hmrnn.cli.bench import main
from hmrnn.data import Vocab
from hmrnn.tasks.charlm.build import build_charlm
from hmrnn.training.checkpoint import save_checkpoint
from hmrnn.training.config import Config, ModelConfig

TINY = ["--layers", "2", "--embedding", "4", "--vocab", "7", "--seq-len", "5", "--repeats",
        "1", "--warmup", "0", "--eval-hidden", "6", "--eval-chars", "120", "--eval-batch", "3",
        "--gen-chars", "4", "--threads", "1"]


def _table(out: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")]
            for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]


def test_prints_every_row_and_target(
    device: torch.device, capsys: pytest.CaptureFixture[str]
) -> None:
    threads = torch.get_num_threads()
    assert main([*TINY, "--device", device.type, "--train", "8:2", "--cell-loop"]) == 0
    out = capsys.readouterr().out
    rows = _table(out)
    trained = ("nn.LSTM", "HM-LSTM", "LN-HM-LSTM", "LN-LSTM", "HM-LSTM cell loop")
    expected = [(m, "train") for m in trained] + [(m, "forward") for m in trained]
    expected += [(m, "eval") for m in ("nn.LSTM", "HM-LSTM", "HM-LSTM sparse")]
    expected += [(m, "generate") for m in ("nn.LSTM", "HM-LSTM", "HM-LSTM streaming")]
    assert [(r[0], r[1]) for r in rows] == expected
    cuda = device.type == "cuda"
    for model, mode, _, _, chars, ratio, dense, copy, *peak in rows:
        assert len(peak) == cuda  # the peak memory column, on CUDA only
        if cuda:  # a step's peak on train rows only
            assert bool(peak[0]) == (mode == "train")
            assert mode != "train" or float(peak[0].replace(",", "")) >= 0  # tiny: rounds to 0
        assert float(chars.replace(",", "")) > 0
        assert ratio == "1 (ref.)" if model == "nn.LSTM" else float(ratio) > 0
        assert bool(dense) == model.startswith("HM-LSTM ")
        if model in ("nn.LSTM", "LN-LSTM"):
            assert copy == ""
        elif mode != "generate" or model == "HM-LSTM streaming":
            shares = [float(c.rstrip("%")) for c in copy.split(" / ")]
            assert len(shares) == 2 and shares[0] == 0  # the bottom layer never copies
    assert "2x8" in rows[0][2] and rows[10][3] == "3" and rows[13][3] == "1"
    targets = out.split("targets:")[1]
    # CPU: two training ratios, generation, sparse evaluation; CUDA: three training ratios
    # (the LN-LSTM's too), two peak memories, generation, sparse and dense evaluation
    assert targets.count("- [") == (8 if cuda else 4)
    machine = out.split("machine:")[1]
    assert "1 torch threads" in machine if device.type == "cpu" else "torch threads" not in machine
    assert torch.get_num_threads() == threads  # restored


def test_trained_checkpoint_and_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = "the cat sat on the mat and the dog sat on the log " * 4
    vocab = Vocab.from_text(text)
    config = Config(model=ModelConfig(num_layers=2, hidden_size=(6, 5), embedding_size=4,
                                      output_size=8, layer_norm=True))
    torch.manual_seed(0)
    model = build_charlm(config.model, len(vocab))
    save_checkpoint(tmp_path / "m.pt", {"kind": "charlm", "config": config.to_dict(),
                                        "model": model.state_dict(), "vocab": vocab.to_list()})
    (tmp_path / "t.txt").write_text(text + "\u00e9", encoding="utf-8")  # an unknown one
    assert main([*TINY, "--suite", "inference", "--checkpoint", str(tmp_path / "m.pt"),
                 "--text", str(tmp_path / "t.txt")]) == 0
    out = capsys.readouterr().out
    rows = _table(out)
    assert [r[1] for r in rows] == ["eval"] * 3 + ["generate"] * 3
    assert rows[0][2] == "LN 6x5"
    assert f"on {len(text):,} chars" in out


def test_boundary_bias_makes_the_random_model_copy(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*TINY, "--suite", "inference", "--boundary-bias", "-50"]) == 0
    rows = _table(capsys.readouterr().out)
    assert rows[2][0] == "HM-LSTM sparse" and rows[2][-1] == "0% / 100%"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--train", "512"], "HIDDEN:BATCH"),
        (["--text", "x.txt"], "give --checkpoint too"),
        (["--repeats", "0"], "--repeats must be at least 1"),
        (["--suite", "inference", "--checkpoint", "missing.pt"], "does not exist"),
        (["--checkpoint", "m.pt", "--boundary-bias", "-1"], "random model only"),
        (["--device", "cpu", "--cuda-graph"], "--cuda-graph needs a CUDA device"),
    ],
)
def test_argument_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    threads = torch.get_num_threads()
    with pytest.raises(SystemExit) as info:
        main([*TINY, *argv])
    assert info.value.code == 2 and message in capsys.readouterr().err
    assert torch.get_num_threads() == threads

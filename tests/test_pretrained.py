"""``hmrnn.load``: a trained character model in one line (encode, decode, forward, generate,
boundaries), and a clear error for every path it cannot read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import hmrnn
from hmrnn.cli import main
from hmrnn.training.checkpoint import save_checkpoint

TINY = ["model.hidden_size=8,7,6", "model.embedding_size=6", "model.output_size=12",
        "train.batch_size=4", "train.seq_len=10", "train.eval_batch_size=8",
        "run.progress=false", "run.tensorboard=false", "train.max_minutes=0"]
TEXT = "the cat sat on a mat\nthe dog ran"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("pretrained")
    corpus = tmp / "corpus.txt"
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran"]
    corpus.write_text("\n".join(" ".join(words[i] for i in rng.integers(0, 8, size=7))
                                for _ in range(60)) + "\n")
    out = tmp / "run"
    assert main(["train", f"data.corpus={corpus}", f"run.out_dir={out}", "train.max_steps=4",
                 "train.eval_every=4", *TINY]) == 0
    return out


@pytest.fixture(scope="module")
def lm(run_dir: Path) -> hmrnn.CharModel:
    return hmrnn.load(run_dir)


def test_load_exported_and_described(lm: hmrnn.CharModel, run_dir: Path) -> None:
    assert "load" in hmrnn.__all__ and "CharModel" in hmrnn.__all__
    assert isinstance(lm, torch.nn.Module) and isinstance(lm.model, hmrnn.CharLM)
    assert lm.path == run_dir / "best.pt" and lm.step == 4
    assert not lm.training
    text = repr(lm)
    for part in ("CharModel(", "hmlstm 3 layers 8x7x6", "vocabulary", "parameters", "step 4",
                 "best.pt", "device cpu"):
        assert part in text, text
    # a checkpoint file loads too, and gives the same weights
    same = hmrnn.load(run_dir / "best.pt", device="cpu")
    for a, b in zip(lm.parameters(), same.parameters(), strict=True):
        assert torch.equal(a, b)


def test_encode_decode_round_trip(lm: hmrnn.CharModel) -> None:
    ids = lm.encode(TEXT)
    assert ids.dtype == torch.long and ids.shape == (len(TEXT),)
    assert lm.decode(ids) == TEXT
    assert lm.decode(ids.tolist()) == TEXT and lm.decode(ids.numpy()) == TEXT
    assert lm.decode(lm.encode("")) == ""
    with pytest.raises(ValueError, match="Z"):
        lm.encode("the Zebra")


def test_forward_gives_the_charlm_output(lm: hmrnn.CharModel) -> None:
    ids = lm.encode(TEXT)
    out = lm(ids)
    assert out.logits.shape == (len(TEXT), 1, len(lm.vocab))
    with torch.no_grad():
        direct = lm.model(ids[:, None], None)
    assert torch.allclose(out.logits, direct.logits)
    two = lm(torch.stack([ids, ids], dim=1))
    assert two.logits.shape == (len(TEXT), 2, len(lm.vocab))
    # the state carries on: reading in two halves gives what reading at once gives
    first = lm(ids[:10])
    second = lm(ids[10:], first.state)
    assert torch.allclose(torch.cat([first.logits, second.logits]), out.logits, atol=1e-5)
    assert torch.allclose(lm("the cat").logits, lm(lm.encode("the cat")).logits)


def test_generate_is_reproducible_with_a_seed(lm: hmrnn.CharModel) -> None:
    a = lm.generate("the ", length=40, seed=3)
    assert len(a) == 40 and set(a) <= set(lm.vocab.symbols)
    assert lm.generate("the ", length=40, seed=3) == a
    assert lm.generate(length=25, seed=0) == lm.generate(length=25, seed=0)
    assert len(lm.generate(length=25, seed=0)) == 25
    assert lm.generate("the", length=0, seed=0) == ""
    # a seed leaves torch's global random state alone
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    lm.generate(length=5, seed=1)
    assert torch.equal(torch.rand(3), expected)
    # temperature 0 is greedy decoding: the same text whatever the seed
    greedy = lm.generate("the ", length=20, temperature=0, seed=1)
    assert len(greedy) == 20 and lm.generate("the ", length=20, temperature=0, seed=2) == greedy
    assert len(lm.generate(length=10, top_k=2, seed=0)) == 10
    with pytest.raises(ValueError, match="temperature"):
        lm.generate(length=5, temperature=-1.0)


def test_boundaries_per_layer(lm: hmrnn.CharModel) -> None:
    z = lm.boundaries(TEXT)
    assert z.shape == (len(TEXT), 3)
    assert np.isin(z, (0.0, 1.0)).all()
    assert (z[:, -1] == 0).all(), "the top layer has no boundary detector"
    assert lm.hidden_norms(TEXT).shape == (len(TEXT), 3)


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        hmrnn.load(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="without a checkpoint"):
        hmrnn.load(tmp_path)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt"):
        hmrnn.load(junk)
    other = save_checkpoint(tmp_path / "hw.pt", {"kind": "handwriting", "config": {},
                                                  "model": {}})
    with pytest.raises(ValueError, match="'handwriting' model, not a character language model"):
        hmrnn.load(other)

"""Which segmentation does the objective prefer? The main job's model trained on given
boundaries.

Layer 1's boundaries are the synthetic corpus's true word ends; layer 2's are one of the
segmentations below, each given to the stack from outside (``HMLSTM(..., boundaries=)``) in
training and in evaluation, so that the detectors play no part. Each run trains the main
job's model (its config's sizes, optimiser, batch, segment length and steps, at a constant
learning rate) with one thread and prints the test split's bits per character: the lower,
the more the language-model objective rewards that segmentation. Layer 2's free choice in
the ablation of docs/hierarchy.md falls between the phrase ends and two other units (the
determiners; the verbs and prepositions); this measures what each is worth.

Compare segmentations with ``--after`` (each boundary on the separator after its unit, a
function of what the model has read). Without it each boundary sits on its unit's last
letter and tells the model what comes next (a separator, a full stop): those runs measure
that leak, not the objective's preference (docs/hierarchy.md, "What the objective
prefers").

    python scripts/given_boundaries.py --after --layer2 phrase det verb-prep --seeds 0 1
    python scripts/given_boundaries.py --after --layer2 phrase --set data.agreement=false
    python scripts/given_boundaries.py --after --layer2 phrase+sentence   # four layers
    python scripts/given_boundaries.py --after --layer2 free --given-steps 200
    python scripts/given_boundaries.py --table-only

Layer 2's segmentations (each boundary on a word's last letter, or with ``--after`` on the
separator after it):

- ``phrase``: the phrase ends (each noun phrase's noun), the issue's target;
- ``det``, ``verb-prep``, ``sentence``: the ends of the determiners, of the verbs and
  prepositions, of the sentences;
- ``word``: every word end (layer 2 updates whenever layer 1 does);
- ``none``: never (layer 3 never updates);
- ``free``: not given: the layer's detector decides, learned as in the main job (its
  boundary gradient, slope schedule and rate controller), so that a layer can learn its
  unit above given word ends.

``--given-steps N`` gives layer 1's word ends for the first N steps only: from step N on
its detector decides, learned as ``free``'s, and the test split is read with every
detector deciding: does a layer 2 that chose its unit above given words keep it once
layer 1 is learned too?
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

if TYPE_CHECKING:
    from hmrnn.model.hmlstm import HMLSTM

LAYER2 = ("phrase", "det", "verb-prep", "sentence", "word", "none", "free")


def category_ends(text: str, categories: set[str]) -> np.ndarray:
    """``(S,)`` bool: True on the last letter of each word of the given lexicon
    categories (``"DET"``, ``"VERB"``, ...)."""
    from hmrnn.data.synthetic import lexicon

    words = {word for name in categories for word in lexicon()[name]}
    ends = np.zeros(len(text), dtype=bool)
    for match in re.finditer(r"[a-z]+", text):
        if match.group().rstrip("s") in words:  # stems hold no "s"
            ends[match.end() - 1] = True
    return ends


def given(corpus: object, split: str, layers: str, after: bool = False) -> np.ndarray:
    """``(S, 1 + K)`` of 0/1 for a split: layer 1 on the word ends, the K layers above it
    as ``layers`` names them (``"phrase"``, or ``"phrase+sentence"`` for a stack of four);
    each on a unit's last letter, or with ``after`` one step later, on the separator that
    follows it (where the free model's layer 1 mostly fires)."""
    from hmrnn.data import Corpus

    assert isinstance(corpus, Corpus) and corpus.boundaries is not None
    truth = corpus.boundaries[split]
    text = corpus.vocab.decode(corpus.splits[split])
    units = {"phrase": lambda: truth["phrase"], "sentence": lambda: truth["sentence"],
             "word": lambda: truth["word"],
             "none": lambda: np.zeros_like(truth["word"]),
             "det": lambda: category_ends(text, {"DET"}),
             "verb-prep": lambda: category_ends(text, {"VERB", "PREP"}),
             "free": lambda: np.zeros_like(truth["word"])}  # NaN in run()
    above = [units[name]() for name in layers.split("+")]
    bits = np.stack([truth["word"], *above], axis=1).astype(np.int64)
    return np.concatenate([bits[:1] * 0, bits[:-1]]) if after else bits


def run(layers: str, seed: int, steps: int, overrides: list[str],
        after: bool = False, given_steps: int = 0) -> dict[str, object]:
    """Train on the given segmentation for ``steps`` steps (0: the main job's) and score
    the test split; ``layers`` as :func:`given` (K of them make a stack of K + 2 layers);
    ``overrides`` (``key=value``) change the main job's config; ``after``: the
    boundaries one step after the units' last letters; ``given_steps`` > 0: layer 1
    given for that many steps only, then learned (and learned on the test split)."""
    import torch
    from torch.nn import functional as F

    from hmrnn.analysis.verdict import hierarchy_summary
    from hmrnn.data import StreamBatcher
    from hmrnn.model.boundary_control import RateController
    from hmrnn.tasks.charlm.build import build_charlm, corpus_from_config
    from hmrnn.tasks.charlm.task import evaluate_lm
    from hmrnn.training.config import load_config, parse_overrides
    from hmrnn.training.trainer import clip_gradients

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    K = len(layers.split("+"))  # given layers above the first
    free = [1 + k for k, name in enumerate(layers.split("+")) if name == "free"]
    deciding = [0, *free] if given_steps else free  # the detectors that decide in the end
    config = load_config(None, {"model.num_layers": str(K + 2),  # the main job's
                                **parse_overrides(overrides)})
    train = config.train
    corpus = corpus_from_config(config.data)
    model = build_charlm(config.model, len(corpus.vocab))
    optimiser = torch.optim.Adam(model.parameters(), lr=train.lr,
                                 betas=(0.9, train.adam_beta2))
    rnn = cast("HMLSTM", model.rnn)
    controller = RateController(rnn, train.boundary_rate, train.rate_gain,
                                error=train.rate_error) if deciding else None

    def boundaries(bits: np.ndarray, columns: list[int]) -> np.ndarray:  # (S, K + 1) bits
        given_z = bits.astype(np.float32)  # -> what the stack takes
        given_z[:, columns] = np.nan  # those detectors decide
        return given_z

    text = torch.from_numpy(corpus.splits["train"])
    train_bits = given(corpus, "train", layers, after)
    train_given = torch.from_numpy(boundaries(train_bits, free))
    # from given_steps on; None where every detector decides (the fast loop)
    train_later = (None if len(deciding) == K + 1
                   else torch.from_numpy(boundaries(train_bits, deciding)))
    # batches of positions, so that the ids and their given boundaries are read alike
    batcher = StreamBatcher(np.arange(len(text)), train.batch_size, train.seq_len)
    state, started = None, time.time()
    steps = steps or train.max_steps
    for step in range(steps):
        k = step % len(batcher)
        if k == 0:
            state = None  # a new epoch starts every stream from zeros
        if deciding:
            rnn.anneal_slope(step / len(batcher), train.slope_rate, train.slope_max)
        at, next_at = batcher.segment(k)  # (T, N) positions in the training split
        given_z = train_later if given_steps and step >= given_steps else train_given
        out = model(text[at], state, boundaries=None if given_z is None else given_z[at])
        loss = F.cross_entropy(out.logits.flatten(0, 1), text[next_at].flatten())
        optimiser.zero_grad()
        loss.backward()
        clip_gradients(model.parameters(), train.clip)
        optimiser.step()
        if controller is not None:
            assert out.rnn.boundary is not None
            controller.update(out.rnn.boundary[..., :-1].mean(dim=(0, 1)).tolist())
        state = tuple(tuple(t.detach() for t in part) for part in out.state)
        if (step + 1) % 300 == 0:
            print(f"{layers} seed {seed}: step {step + 1}, train loss {loss.item():.3f}, "
                  f"{time.time() - started:.0f} s", flush=True)
    test_bits = given(corpus, "test", layers, after)
    evaluation = evaluate_lm(model, corpus.splits["test"], batch_size=train.eval_batch_size,
                             seq_len=train.seq_len,
                             boundaries=boundaries(test_bits, deciding))
    assert evaluation.boundary is not None
    assert corpus.boundaries is not None
    truth = {kind: ends[:-1] for kind, ends in corpus.boundaries["test"].items()}
    learned = hierarchy_summary(evaluation.boundary, truth)
    rates = test_bits.mean(axis=0)[1:]
    return {"layer2": layers + (" after" if after else ""), "seed": seed,
            "overrides": overrides, "given_steps": given_steps,
            "bpc": round(evaluation.bpc, 4), "layer2_rate": round(float(rates[0]), 4),
            "rates_above": [round(float(r), 4) for r in rates], "steps": steps,
            "free": {f"layer{l + 1}": {"rate": round(learned["rates"][l], 4),
                                       **{kind: round(v["f1"], 3) for kind, v in
                                          learned["f1"][f"layer{l + 1}"].items()}}
                     for l in deciding},
            "wall_s": round(time.time() - started)}


def _layers(spec: str) -> str:
    """``--layer2``'s values: segmentation names joined by ``+``."""
    unknown = [name for name in spec.split("+") if name not in LAYER2]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown segmentation {unknown[0]!r}; "
                                         f"choose from {', '.join(LAYER2)}")
    return spec


def table(out: Path) -> str:
    """Mean ± spread of the test bits per character per segmentation (and length, where
    not the main job's), best first."""
    from hmrnn.training.config import TrainConfig

    main_steps = TrainConfig().max_steps
    rows: dict[str, list[dict[str, object]]] = {}
    for line in (out / "results.jsonl").read_text().splitlines():
        record = json.loads(line)
        length = [] if record["steps"] == main_steps else [f"{record['steps']} steps"]
        given_steps = record.get("given_steps", 0)
        first = [f"(layer 1 given for {given_steps} steps)"] if given_steps else []
        name = " ".join([str(record["layer2"]), *record.get("overrides", []), *length, *first])
        rows.setdefault(name, []).append(record)
    lines = ["| layer 2 given on | rate | seeds | test BPC | learned layer 2: rate, F1 word / "
             "phrase / sentence |", "| --- | ---: | --- | ---: | --- |"]
    for name, records in sorted(rows.items(), key=lambda kv: statistics.mean(
            float(str(r["bpc"])) for r in kv[1])):
        bpc = [float(str(r["bpc"])) for r in records]
        cell = (f"{bpc[0]:.4f}" if len(bpc) == 1 else
                f"{statistics.mean(bpc):.4f} ± {statistics.pstdev(bpc):.4f}")
        seeds = ",".join(str(r["seed"]) for r in records)
        learned = "; ".join(
            f"{f['rate']:.3f}, {f['word']:.2f} / {f['phrase']:.2f} / {f['sentence']:.2f}"
            for f in (cast(dict, r.get("free", {})).get("layer2") for r in records) if f)
        lines.append(f"| {name} | {records[0]['layer2_rate']:.3f} | {seeds} | {cell} | "
                     f"{learned or '-'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layer2", nargs="*", default=list(LAYER2), type=_layers,
                        help=f"one of {', '.join(LAYER2)}, or several joined by + for the "
                             "layers 2, 3, ... of a taller stack (phrase+sentence)")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--steps", type=int, default=0, help="0: the main job's")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides of the main job's config, e.g. data.agreement=false")
    parser.add_argument("--after", action="store_true",
                        help="each boundary one step after its unit's last letter")
    parser.add_argument("--given-steps", type=int, default=0,
                        help="layer 1 given for this many steps only, then learned "
                             "(0: given throughout)")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/given-boundaries"))
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        jobs = [(name, seed, args.steps, args.set, args.after, args.given_steps)
                for seed in args.seeds for name in args.layer2]
        with ProcessPoolExecutor(args.parallel) as pool:
            for result in pool.map(run, *zip(*jobs, strict=True)):
                with open(args.out / "results.jsonl", "a") as f:
                    f.write(json.dumps(result) + "\n")
                print(json.dumps(result), flush=True)
    print(table(args.out))


if __name__ == "__main__":
    main()

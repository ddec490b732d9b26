"""What makes the HM-LSTM's hierarchy emerge: the ablation rows of docs/hierarchy.md.

Each row is ``hmrnn train`` on the embedded synthetic corpus (the main job's model and
data) with a fixed number of steps and the row's overrides on the main job's settings
before commit 11ce5ef (``BEFORE_11CE5EF``), once per seed; each trained
model is then scored on the test split: bits per character, boundary rates, computation
saved, and the exact F1 of layer 1 against word ends and of layer 2 against phrase ends
(the better of the two alignment conventions, :mod:`hmrnn.analysis.verdict`). Runs go two
at a time with one thread each; every result is appended to ``OUT/results.jsonl`` as it
lands, and the table (mean and spread over seeds) is printed from that file.

    python scripts/hierarchy_study.py --rows main none --seeds 0 1 2
    python scripts/hierarchy_study.py --table-only        # the table of what has landed
    python scripts/hierarchy_study.py --rescore --rows main   # score landed runs again
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

WORD_TARGET, PHRASE_TARGET = 0.8, 0.5  # the main job's targets (docs/hierarchy.md)
AUTHORS = ["train.boundary_cap=1.9365", "train.adam_beta2=0.99", "train.weight_decay=0.0005"]
PAPER_SLOPE = ["train.slope_rate=0.04", "train.slope_max=5"]  # the paper's annealing
LINEAR = ["train.rate_error=linear"]  # the controller's first form (error = target - rate)
# The main job's settings until commit 11ce5ef (the paper's chain, one controller gain 0.05,
# the slope annealed up to 2), which every row below starts from, so that each computes as
# it did when it ran.
BEFORE_11CE5EF = ["model.boundary_grad=chain", "train.rate_gain=0.05", "train.slope_max=2"]
ROWS: dict[str, list[str]] = {
    # Each row is that main job (the logit controller holding 0.2 / 0.05, the slope annealed
    # at 1 per epoch up to 2) with the row's overrides; main-local-gain0.2-0.05-slope5 is
    # today's main job.
    "main": [],
    "main-slope3": ["train.slope_max=3"],
    "main-slope5": ["train.slope_max=5"],
    "main-no-spaces": ["data.spaces=false"],
    "main-sample": ["model.boundary=sample"],
    "main-no-ln": ["model.layer_norm=false"],
    "main-own-bias": ["train.rate_bias_gradient=false"],
    "main-3000": ["train.max_steps=3000"],  # longer training (overrides --steps)
    "main-seq100": ["train.seq_len=100"],  # longer segments
    "main-cap": ["train.boundary_cap=1.9365"],  # the authors' boundary-row norm cap
    "main-wd": ["train.weight_decay=0.0005"],  # the authors' weight decay
    # where the straight-through gradient goes (model.boundary_grad, docs/model.md decision 9)
    "main-hold": ["model.boundary_grad=hold"],
    "main-hold-seq100": ["model.boundary_grad=hold", "train.seq_len=100"],
    "main-hold-slope5": ["model.boundary_grad=hold", "train.slope_max=5"],
    "main-hold-gain0.2": ["model.boundary_grad=hold", "train.rate_gain=0.2"],
    "main-local-gain0.2": ["model.boundary_grad=local", "train.rate_gain=0.2"],
    "main-local-gain0.2-0.05": ["model.boundary_grad=local", "train.rate_gain=0.2,0.05"],
    "main-no-spaces-local": ["data.spaces=false", "model.boundary_grad=local",
                             "train.rate_gain=0.2"],
    # the targets at the true word and phrase rates of the text without spaces
    "main-no-spaces-local-rates": ["data.spaces=false", "model.boundary_grad=local",
                                   "train.rate_gain=0.2", "train.boundary_rate=0.22,0.074"],
    # layer 2's target falls from layer 1's (0.2) to its own (0.05) over the first steps
    "main-warmup500": ["train.rate_warmup=500"],
    "main-local-gain0.2-warmup500": ["model.boundary_grad=local", "train.rate_gain=0.2",
                                     "train.rate_warmup=500"],
    "main-hold-cap": ["model.boundary_grad=hold", "train.boundary_cap=1.9365"],
    "main-hold-gaincap": ["model.boundary_grad=hold", "train.boundary_gain_cap=0.2"],
    "main-local": ["model.boundary_grad=local"],
    "main-local-seq100": ["model.boundary_grad=local", "train.seq_len=100"],
    "main-local-slope5": ["model.boundary_grad=local", "train.slope_max=5"],
    "main-local-gain0.2-slope5": ["model.boundary_grad=local", "train.rate_gain=0.2",
                                  "train.slope_max=5"],
    "main-local-gain0.2-0.05-slope5": ["model.boundary_grad=local", "train.rate_gain=0.2,0.05",
                                       "train.slope_max=5"],
    # layer 2's target at the corpus's phrase rate (0.062) instead of Figure 4's 0.05, near
    # the rate of the verbs and prepositions (0.037) that layer 2 marks in the misses
    "main-local-gain0.2-slope5-phrase-rate": ["model.boundary_grad=local", "train.rate_gain=0.2",
                                              "train.slope_max=5", "train.boundary_rate=0.2,0.062"],
    "main-local-gain0.2-0.05-slope5-phrase-rate": ["model.boundary_grad=local",
                                                   "train.rate_gain=0.2,0.05", "train.slope_max=5",
                                                   "train.boundary_rate=0.2,0.062"],
    # layer 2's detector out of the optimiser's reach until layer 1 has found the words
    "main-local-gain0.2-slope5-phrase-rate-release400": [
        "model.boundary_grad=local", "train.rate_gain=0.2", "train.slope_max=5",
        "train.boundary_rate=0.2,0.062", "train.boundary_release=400"],
    # the synthetic language without subject-verb agreement, the one dependency that runs
    # across a phrase end (the subject's)
    "main-local-gain0.2-slope5-phrase-rate-no-agreement": [
        "model.boundary_grad=local", "train.rate_gain=0.2", "train.slope_max=5",
        "train.boundary_rate=0.2,0.062", "data.agreement=false"],
    # today's main job with the detectors spread at the start (rates neither all 0 nor all 1)
    "main-local-gain0.2-0.05-slope5-lngain0.3": [
        "model.boundary_grad=local", "train.rate_gain=0.2,0.05", "train.slope_max=5",
        "model.boundary_ln_gain=0.3"],
    # today's main job with the boundary biases set on the first batch (rates at target)
    "main-local-gain0.2-0.05-slope5-calibrate": [
        "model.boundary_grad=local", "train.rate_gain=0.2,0.05", "train.slope_max=5",
        "train.rate_calibrate=true"],
    # today's main job trained longer (2,200 steps: about 4.5 minutes at two threads here)
    "main-local-gain0.2-0.05-slope5-2200": [
        "model.boundary_grad=local", "train.rate_gain=0.2,0.05", "train.slope_max=5",
        "train.max_steps=2200"],
    # Gumbel-sigmoid boundaries (model.boundary=gumbel): z ~ Bernoulli(sigmoid(a s_z)) in
    # training, the slope annealed 1 -> 5 as the inverse temperature; "step" in evaluation
    "main-local-gain0.2-0.05-slope5-gumbel": [
        "model.boundary_grad=local", "train.rate_gain=0.2,0.05", "train.slope_max=5",
        "model.boundary=gumbel"],
    # layer 2's target at Figure 4's own rate (layer 3 updates 9 times in 270 characters)
    "main-local-gain0.2-0.05-slope5-fig4-rate": [
        "model.boundary_grad=local", "train.rate_gain=0.2,0.05", "train.slope_max=5",
        "train.boundary_rate=0.2,0.033"],
    # layer 2's target at the corpus's sentence rate (0.025), with a gain that holds it
    "main-local-gain0.2-slope5-sentence-rate": [
        "model.boundary_grad=local", "train.rate_gain=0.2", "train.slope_max=5",
        "train.boundary_rate=0.2,0.025"],
    # four layers, the targets at the corpus's word, phrase and sentence rates
    "main-4-layers-rates": [
        "model.boundary_grad=local", "train.rate_gain=0.2,0.05,0.05", "train.slope_max=5",
        "model.num_layers=4", "train.boundary_rate=0.2,0.062,0.025"],
    # today's main job with layer 2 silent until layer 1 has found the words, then released
    # at its target (its bias bisected on the batch)
    "main-local-gain0.2-0.05-slope5-silent400": [
        "model.boundary_grad=local", "train.rate_gain=0.2,0.05", "train.slope_max=5",
        "train.boundary_release=400", "train.release_silent=true"],
    # today's main job with the biases recentred on the batch over the first 40 steps (as on
    # PTB), so that layer 1 starts at its rate instead of swinging between 0 and 1
    "main-local-gain0.2-0.05-slope5-recentre40": [
        "model.boundary_grad=local", "train.rate_gain=0.2,0.05", "train.slope_max=5",
        "train.rate_recentre=40"],
    # today's main job with the slope annealed 3x faster (5 by step 200), so that layer 1
    # might find the words before layer 2 chooses
    "main-local-gain0.2-0.05-slope5-fast-anneal": [
        "model.boundary_grad=local", "train.rate_gain=0.2,0.05", "train.slope_max=5",
        "train.slope_rate=3"],
    # today's main job with layer 1 pushed toward the steps where the next character got
    # harder to predict (train.surprisal_prior, layer 1 only), so that it might find the
    # words before layer 2 chooses
    "main-local-gain0.2-0.05-slope5-surprisal0.1": [
        "model.boundary_grad=local", "train.rate_gain=0.2,0.05", "train.slope_max=5",
        "train.surprisal_prior=0.1,0"],
    "main-local-gain0.2-0.05-slope5-surprisal1": [
        "model.boundary_grad=local", "train.rate_gain=0.2,0.05", "train.slope_max=5",
        "train.surprisal_prior=1,0"],
    # the same with layer 1's rate held where the prior pushes it above its target: the
    # biases recentred on each batch for the first 200 steps, or a controller gain of 1
    "main-local-gain0.2-0.05-slope5-surprisal1-recentre200": [
        "model.boundary_grad=local", "train.rate_gain=0.2,0.05", "train.slope_max=5",
        "train.surprisal_prior=1,0", "train.rate_recentre=200"],
    "main-local-gain0.2-0.05-slope5-recentre200": [  # the same hold without the prior
        "model.boundary_grad=local", "train.rate_gain=0.2,0.05", "train.slope_max=5",
        "train.rate_recentre=200"],
    "main-local-gain1-0.05-slope5-surprisal0.3": [
        "model.boundary_grad=local", "train.rate_gain=1,0.05", "train.slope_max=5",
        "train.surprisal_prior=0.3,0"],
    # today's main job with layer 1 given on the characters after words for the first 200
    # steps, then learned (train.separator_warmup): the `free` runs' start, for a while
    "main-local-gain0.2-0.05-slope5-separators200": [
        "model.boundary_grad=local", "train.rate_gain=0.2,0.05", "train.slope_max=5",
        "train.separator_warmup=200"],
    "main-local-gain0.2-0.05-slope5-separators200-fast-anneal": [  # with *-fast-anneal's
        "model.boundary_grad=local", "train.rate_gain=0.2,0.05", "train.slope_max=5",
        "train.separator_warmup=200", "train.slope_rate=3"],
    # the same without spaces, and today's main job without spaces to compare with
    "main-local-gain0.2-0.05-slope5-no-spaces-surprisal1": [
        "model.boundary_grad=local", "train.rate_gain=0.2,0.05", "train.slope_max=5",
        "train.surprisal_prior=1,0", "data.spaces=false"],
    "main-local-gain0.2-0.05-slope5-no-spaces": [
        "model.boundary_grad=local", "train.rate_gain=0.2,0.05", "train.slope_max=5",
        "data.spaces=false"],
    "linear-slope5": [*LINEAR, "train.slope_max=5"],
    "linear-slope3": [*LINEAR, "train.slope_max=3"],
    "linear-slope5-cap": [*LINEAR, "train.slope_max=5", "train.boundary_cap=1.9365"],
    "linear-slope5-no-ln": [*LINEAR, "train.slope_max=5", "model.layer_norm=false"],
    "linear-slope5-sample": [*LINEAR, "train.slope_max=5", "model.boundary=sample"],
    # the paper's recipe (step boundaries, its slope annealing), no control
    "none": ["train.rate_control=none", *PAPER_SLOPE],
    "authors": ["train.rate_control=none", *PAPER_SLOPE, *AUTHORS],
    "none-sample": ["train.rate_control=none", *PAPER_SLOPE, "model.boundary=sample"],
    "none-gumbel": ["train.rate_control=none", *PAPER_SLOPE, "model.boundary=gumbel"],
    "ratio-loss": ["train.rate_control=loss", "train.rate_gain=1.0", *PAPER_SLOPE],
    # a binomial prior on each stream's boundary count in place of the controller
    "prior": ["train.rate_control=prior", "train.rate_gain=1.0"],
    # the linear controller with the paper's slope annealing, and its variants
    "control-slow": [*LINEAR, *PAPER_SLOPE],
    "control-slow-gain0.01": [*LINEAR, "train.rate_gain=0.01", *PAPER_SLOPE],
    "control-slow-gain0.1": [*LINEAR, "train.rate_gain=0.1", *PAPER_SLOPE],
    "control-slow-authors": [*LINEAR, *PAPER_SLOPE, *AUTHORS],
    "control-slow-no-spaces": [*LINEAR, *PAPER_SLOPE, "data.spaces=false"],
}


def train(row: str, seed: int, steps: int, out: Path) -> Path:
    run_dir = out / f"{row}-s{seed}"
    command = [sys.executable, "-m", "hmrnn", "train", "--no-report",
               f"run.out_dir={run_dir}", f"train.seed={seed}", "run.threads=1",
               "run.progress=false", f"train.max_steps={steps}", "train.max_minutes=0",
               *BEFORE_11CE5EF, *ROWS[row]]
    with open(out / f"{row}-s{seed}.log", "w") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True)
    return run_dir


def _marks_end(fired: np.ndarray, last: int) -> bool:
    """Whether ``fired`` marks a word ending at ``last``: on it, or one step after it."""
    return bool(fired[last] or (last + 1 < len(fired) and fired[last + 1]))


def word_marks(text: str, fired: np.ndarray) -> dict[str, float]:
    """Per word category of the synthetic lexicon, the share of its words whose end a
    layer marked (``fired (S,)``, on the last letter or one step after it); ``{}`` for a
    text without spaces, whose words cannot be read off. The words at the text's two ends
    are left out: the split may cut them."""
    from hmrnn.data.synthetic import lexicon

    if " " not in text:
        return {}
    category = {word: name for name, words in lexicon().items() for word in words}
    marked: dict[str, list[int]] = {name: [0, 0] for name in lexicon()}
    for match in re.finditer(r"[a-z]+", text):
        if match.start() == 0 or match.end() == len(text):
            continue
        last = match.end() - 1
        counts = marked[category[match.group().rstrip("s")]]  # stems hold no "s"
        counts[0] += _marks_end(fired, last)
        counts[1] += 1
    return {name: round(hit / total, 3) for name, (hit, total) in marked.items() if total}


def noun_marks(text: str, fired: np.ndarray) -> dict[str, float]:
    """The share of the subjects', the objects' and the prepositional phrases' nouns whose
    end a layer marked (as :func:`word_marks`): a sentence's first, second and third noun.
    The subject's end is the one phrase end across which a dependency runs (the verb
    agrees with it)."""
    from hmrnn.data.synthetic import lexicon

    if " " not in text:
        return {}
    nouns = set(lexicon()["NOUN"])
    roles = ("subject", "object", "pp")
    marked = {role: [0, 0] for role in roles}
    for sentence in list(re.finditer(r"[^.\n]+", text))[1:-1]:  # the split cuts the ends
        found = [m for m in re.finditer(r"[a-z]+", sentence.group())
                 if m.group().rstrip("s") in nouns]
        for role, match in zip(roles, found, strict=False):  # a PP is optional
            last = sentence.start() + match.end() - 1
            counts = marked[role]
            counts[0] += _marks_end(fired, last)
            counts[1] += 1
    return {role: round(hit / total, 3) for role, (hit, total) in marked.items() if total}


def separator_rates(text: str, fired: np.ndarray) -> dict[str, list[float]]:
    """Per separator (space, full stop, newline), the share of its positions at which each
    layer fired (``fired (S, L)``): where a layer puts the boundary of a sentence's end."""
    chars = np.array(list(text))
    return {name: [round(float(v), 3) for v in fired[chars == c].mean(axis=0)]
            for name, c in (("space", " "), ("stop", "."), ("newline", "\n")) if (chars == c).any()}


def gap_f1(text: str, fired: np.ndarray, reference: np.ndarray) -> float:
    """Exact F1 of ``fired (S,)`` against ``reference (S,)`` (a segment's last letter) when
    a boundary on any separator counts as one on the last letter before it: a third
    alignment convention, beside the library's two, under which a sentence end marked on
    the newline (two steps after the last letter) is a hit."""
    from hmrnn.analysis.boundaries import boundary_prf

    moved = np.zeros_like(reference, dtype=bool)
    last_letter = -1
    for t, c in enumerate(text[: len(fired)]):
        if c.isalpha():
            last_letter = t
            moved[t] |= bool(fired[t])
        elif fired[t] and last_letter >= 0:
            moved[last_letter] = True
    return boundary_prf(moved, reference[: len(moved)]).f1


def score(row: str, seed: int, run_dir: Path) -> dict[str, object]:
    """Test-split scores of the run's best checkpoint."""
    import torch

    from hmrnn.analysis.verdict import hierarchy_summary
    from hmrnn.tasks.charlm.build import corpus_from_config
    from hmrnn.tasks.charlm.task import evaluate_lm, load_charlm, segment_references

    torch.set_num_threads(1)
    model, _, config, _ = load_charlm(run_dir / "best.pt")
    corpus = corpus_from_config(config.data)  # the synthetic corpus the run trained on
    result = evaluate_lm(model, corpus.splits["test"], batch_size=config.train.eval_batch_size,
                         seq_len=config.train.seq_len)
    assert result.boundary is not None and corpus.boundaries is not None
    fired = np.asarray(result.boundary > 0.5)  # (S, L)
    references = segment_references(corpus, "test")
    sentences = corpus.boundaries["test"]["sentence"][:-1]  # at the input positions
    summary = hierarchy_summary(fired, {**references, "sentence": sentences})
    f1 = summary["f1"]
    above = {f"l3_{kind}_f1": round(f1["layer3"][kind]["f1"], 3)
             for kind in ("phrase", "sentence") if "layer3" in f1}  # four layers or more
    text = corpus.vocab.decode(corpus.splits["test"][: len(fired)])
    return {"row": row, "seed": seed, "overrides": ROWS[row], "bpc": round(result.bpc, 4),
            "rates": [round(r, 3) for r in summary["rates"]],
            "saved": round(summary["saved_fraction"], 3),
            "l1_word_f1": round(f1["layer1"]["word"]["f1"], 3),
            "l1_word_convention": f1["layer1"]["word"]["convention"],
            "l2_phrase_f1": round(f1["layer2"]["phrase"]["f1"], 3),
            "l2_phrase_convention": f1["layer2"]["phrase"]["convention"],
            "l2_sentence_f1": round(f1["layer2"]["sentence"]["f1"], 3), **above,
            "l2_marks": word_marks(text, fired[:, 1]), "l2_nouns": noun_marks(text, fired[:, 1]),
            "at_separators": separator_rates(text, fired),
            "l1_word_gap_f1": round(gap_f1(text, fired[:, 0], references["word"]), 3),
            "l2_phrase_gap_f1": round(gap_f1(text, fired[:, 1], references["phrase"]), 3)}


def run_one(row: str, seed: int, steps: int, out: Path, rescore: bool = False) -> None:
    try:
        run_dir = out / f"{row}-s{seed}" if rescore else train(row, seed, steps, out)
        result = score(row, seed, run_dir)
    except (subprocess.CalledProcessError, OSError, ValueError, RuntimeError) as err:
        print(f"{row} seed {seed} failed ({err}); see {out}/{row}-s{seed}.log", flush=True)
        return
    with open(out / "results.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    print(json.dumps(result), flush=True)


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.pstdev(values):.3f}"


def _marks(marks: dict[str, float]) -> str:
    """The categories whose words' ends a layer marked at least half the time: ``N+V``."""
    return "+".join(name[0] for name, share in marks.items() if share >= 0.5) or "-"


def table(out: Path) -> str:
    """Mean ± spread (population standard deviation) per row over the seeds that landed
    (the last record of a row and seed, when it was scored again), and per seed the word
    categories layer 2 marks (D determiners, A adjectives, N nouns, V verbs, P
    prepositions; a phrase ends with its noun), and in how many seeds layer 1's word F1
    and layer 2's phrase F1 both reached the hierarchy issue's targets."""
    latest: dict[tuple[str, int], dict] = {}
    for line in (out / "results.jsonl").read_text().splitlines():
        record = json.loads(line)
        latest[record["row"], record["seed"]] = record
    by_row: dict[str, list[dict]] = {}
    for record in latest.values():
        by_row.setdefault(record["row"], []).append(record)
    lines = ["| row | overrides | seeds | test BPC | rate 1 | rate 2 | layer-1 word F1 | "
             "layer-2 phrase F1 | saved | both F1 targets | layer 2 marks |",
             "| --- | --- | --- |" + " ---: |" * 7 + " --- |"]
    for row, records in by_row.items():
        records.sort(key=lambda r: r["seed"])
        met = sum(r["l1_word_f1"] >= WORD_TARGET and r["l2_phrase_f1"] >= PHRASE_TARGET
                  for r in records)
        def get(key: str, i: int | None = None, records: list[dict] = records) -> list[float]:
            return [r[key] if i is None else r[key][i] for r in records]

        lines.append(
            f"| {row} | `{' '.join(records[0]['overrides']) or '(defaults)'}` | "
            f"{','.join(str(r['seed']) for r in records)} | {_cell(get('bpc'))} | "
            f"{_cell(get('rates', 0))} | {_cell(get('rates', 1))} | "
            f"{_cell(get('l1_word_f1'))} | {_cell(get('l2_phrase_f1'))} | {_cell(get('saved'))} | "
            f"{met} of {len(records)} | "
            f"{' / '.join(_marks(r['l2_marks']) if 'l2_marks' in r else '?' for r in records)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/hierarchy-study"))
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--rescore", action="store_true",
                        help="score the rows' existing runs again instead of training them")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        jobs = [(row, seed) for seed in args.seeds for row in args.rows]
        with ThreadPoolExecutor(args.parallel) as pool:
            for future in [pool.submit(run_one, r, s, args.steps, args.out, args.rescore)
                           for r, s in jobs]:
                future.result()
    print(table(args.out))


if __name__ == "__main__":
    main()

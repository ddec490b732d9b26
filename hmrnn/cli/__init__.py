"""The ``hmrnn`` command line: train, eval, sample, inspect, data, bench.

Every user error ends in one line on stderr and a non-zero exit, never a stack trace.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXIT_USAGE = 2
EXIT_FAILED = 1


def _print(*args: Any) -> None:
    print(*args, flush=True)


# -- train ------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    from hmrnn.data import Vocab, load_corpus
    from hmrnn.tasks.charlm.build import build_charlm
    from hmrnn.tasks.charlm.task import CharLMTask
    from hmrnn.training.session import run_training

    def make_task(config: Any, checkpoint: Any, context: Any, say: Any) -> CharLMTask:
        data = config.data
        corpus = load_corpus(
            data.corpus, data.data_dir or None, cache_dir=data.cache_dir or None,
            download=data.download,
            **({"fractions": data.fractions} if data.corpus not in ("synthetic", "ptb") else {}),
            **({"train_chars": data.synthetic_chars, "valid_chars": data.synthetic_chars // 10,
                "test_chars": data.synthetic_chars // 10, "seed": data.seed,
                "spaces": data.spaces} if data.corpus == "synthetic" else {}),
        )
        if checkpoint is not None and Vocab.from_list(checkpoint["vocab"]) != corpus.vocab:
            raise ValueError("--resume: the corpus's vocabulary differs from the checkpoint's")
        model = build_charlm(config.model, len(corpus.vocab)).to(context.device)
        say(f"model: {sum(p.numel() for p in model.parameters()):,} parameters, "
            f"vocabulary {len(corpus.vocab)}, device {context.device}, "
            f"{context.world_size} process(es)")
        return CharLMTask(model, corpus, config, context)

    def report(trainer: Any, task: Any, say: Any) -> None:
        _final_report(trainer, task, task.corpus, say)

    return run_training(args.config, args.overrides, kind="charlm", resume=args.resume,
                        make_task=make_task, report=None if args.no_report else report)


def _final_report(trainer: Any, task: Any, corpus: Any, say: Any) -> None:
    """Test BPC of the best model, its boundaries against true word ends, and a sample."""
    import torch

    from hmrnn.analysis.boundaries import collapse_warnings, format_scores, segmentation_scores
    from hmrnn.tasks.charlm.task import evaluate_lm, sample_text
    from hmrnn.training.checkpoint import load_checkpoint

    context = trainer.context
    if context.broadcast_flag(trainer.best_path.exists()):
        if context.is_main:
            trainer.model.load_state_dict(load_checkpoint(trainer.best_path)["model"])
        context.broadcast_module(trainer.model)  # other nodes may not see run.out_dir
    cfg = trainer.config.train
    device = context.device
    result = evaluate_lm(trainer.model, corpus.splits["test"], batch_size=cfg.eval_batch_size,
                         seq_len=cfg.seq_len, device=device, context=context)
    say(f"test: {result.bpc:.4f} bits per character over {result.chars:,} characters "
        f"(best checkpoint)")
    if result.boundary is not None and context.is_main:  # the whole split's, on every rank
        say("boundary rates: " + " ".join(
            f"layer{l + 1}={r:.3f}" for l, r in enumerate(result.boundary_rates())))
        z = result.boundary > 0.5
        if corpus.boundaries is not None:  # the synthetic corpus's true word and phrase ends
            truth = corpus.boundaries["test"]
            scores = segmentation_scores(z, None, {k: truth[k][:-1] for k in ("word", "phrase")})
        else:
            scores = segmentation_scores(z, corpus.vocab.decode(corpus.splits["test"][:-1]))
        say("boundaries against the true segmentation (test split; tol1 allows one step):")
        say(format_scores(scores))
        for warning in collapse_warnings(result.boundary_rates(), low=0.02, high=0.98):
            say(f"warning: {warning}")
    if context.is_main:
        say("sample:")
        text = "".join(sample_text(trainer.model, corpus.vocab, length=300, device=device,
                                   generator=torch.Generator().manual_seed(0)))
        say(text)
        say(f"checkpoints: {trainer.best_path} (best), {trainer.last_path} (last)")


# -- eval / sample ----------------------------------------------------------------------


def _text_ids(vocab: Any, args: argparse.Namespace) -> Any:
    from hmrnn.data import DataError

    path = Path(args.file)
    if not path.is_file():
        raise DataError(f"file {path} does not exist")
    raw = path.read_bytes()
    if b"\x00" in raw:
        raise DataError(f"{path} looks binary (it contains NUL bytes); give a text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start})") from None
    if args.ptb_format:
        text = "".join("".join(line.split()) + "\n" for line in text.splitlines())
    return text, vocab.encode(text, where=str(path))


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from hmrnn.analysis.boundaries import computation_summary, format_scores, segmentation_scores
    from hmrnn.data import DataError, load_corpus
    from hmrnn.tasks.charlm.task import evaluate_lm, load_charlm
    from hmrnn.training.config import load_config

    torch.manual_seed(0)
    model, vocab, config, _ = load_charlm(args.checkpoint)
    if args.boundary:
        if not hasattr(model.rnn, "boundary"):
            raise ValueError("--boundary only applies to HM-LSTM models")
        model.rnn.boundary = args.boundary
    refs = None
    if args.file:
        text, ids = _text_ids(vocab, args)
        where = args.file
    else:
        data = load_config(None, {}).data if args.corpus else config.data
        name = args.corpus or data.corpus
        options: dict[str, Any] = {}
        if name == "synthetic":
            options = {"train_chars": data.synthetic_chars, "valid_chars":
                       data.synthetic_chars // 10, "test_chars": data.synthetic_chars // 10,
                       "seed": data.seed, "spaces": data.spaces}
        corpus = load_corpus(name, args.data_dir or data.data_dir or None, **options)
        if corpus.vocab != vocab:
            missing = set(corpus.vocab.symbols) - set(vocab.symbols)
            if missing:
                raise DataError(f"corpus {name!r} has characters the model never saw: "
                                f"{sorted(missing)[:10]}")
            ids = vocab.encode(corpus.vocab.decode(corpus.splits[args.split]))
        else:
            ids = corpus.splits[args.split]
        text = vocab.decode(ids)
        where = f"{name} {args.split}"
        if corpus.boundaries is not None:
            refs = {k: v[:-1] for k, v in corpus.boundaries[args.split].items()}
    if len(ids) < 2:
        raise DataError(f"{where} is too short: at least 2 characters are needed to score one")
    result = evaluate_lm(model, ids, batch_size=args.batch_size, seq_len=config.train.seq_len)
    report: dict[str, Any] = {"data": where, "chars": result.chars, "bpc": result.bpc,
                              "nll_nats": result.nll}
    lines = [f"{where}: {result.bpc:.4f} bits per character over {result.chars:,} characters"]
    if result.boundary is not None:
        rates = result.boundary_rates()
        report["boundary_rates"] = rates
        lines.append("boundary rates: " + " ".join(
            f"layer{l + 1}={r:.3f}" for l, r in enumerate(rates)))
        z = result.boundary > 0.5
        computation = computation_summary(z)
        report["computation"] = computation
        lines.append(f"layer updates: {computation['total_updates']:,} against "
                     f"{computation['stacked_rnn_updates']:,} for a standard stacked RNN "
                     f"({computation['saved_fraction']:.1%} saved)")
        scores = segmentation_scores(z, text[:-1], refs)
        report["segmentation"] = scores
        lines.append(format_scores(scores))
    _print(json.dumps(report, indent=2) if args.json else "\n".join(lines))
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from hmrnn.tasks.charlm.task import load_charlm, sample_text

    model, vocab, _, _ = load_charlm(args.checkpoint)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    if args.prime:
        sys.stdout.write(args.prime)
    for ch in sample_text(model, vocab, length=args.length, temperature=args.temperature,
                          top_k=args.top_k, prime=args.prime, generator=generator):
        sys.stdout.write(ch)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


# -- inspect ----------------------------------------------------------------------------


def cmd_inspect(args: argparse.Namespace) -> int:
    from hmrnn.analysis.boundaries import format_scores
    from hmrnn.analysis.report import inspect_sequence
    from hmrnn.data import DataError, generate
    from hmrnn.tasks.charlm.task import load_charlm, trace_text

    model, vocab, _, _ = load_charlm(args.checkpoint)
    if model.rnn.__class__.__name__ != "HMLSTM":
        raise ValueError("inspect needs an HM-LSTM checkpoint (baselines have no boundaries)")
    references = None
    if args.synthetic:
        synthetic = generate(args.synthetic, seed=args.seed, spaces=" " in vocab)
        text = synthetic.text
        references = {"word": synthetic.word_end, "phrase": synthetic.phrase_end}
    elif args.file:
        text, _ = _text_ids(vocab, args)
    else:
        text = args.text
    if not text:
        raise DataError("nothing to inspect: the text is empty")
    if len(text) > args.max_chars:
        text = text[: args.max_chars]
        if references is not None:
            references = {k: v[: args.max_chars] for k, v in references.items()}
    boundary, norms = trace_text(model, vocab, text)
    summary = inspect_sequence(text, boundary > 0.5, norms, args.out, references=references,
                               width=args.width)
    for stats in summary["operation_counts"]:
        _print(f"layer{stats['layer']}: UPDATE {stats['update']}  COPY {stats['copy']}  "
               f"FLUSH {stats['flush']}  boundary rate {stats['boundary_rate']:.3f}")
    comp = summary["computation"]
    _print(f"layer updates: {comp['total_updates']} against {comp['stacked_rnn_updates']} for a "
           f"standard stacked RNN ({comp['saved_fraction']:.1%} saved)")
    if summary["segmentation"] is not None:
        _print(format_scores(summary["segmentation"]))
    for warning in summary["warnings"]:
        _print(f"warning: {warning}")
    _print(f"wrote {', '.join(summary['files'].values())} to {args.out}")
    return 0


# -- data -------------------------------------------------------------------------------


def cmd_data(args: argparse.Namespace) -> int:
    from hmrnn.data import describe, download_corpus, load_corpus, verify_corpus

    if args.action == "download":
        path = download_corpus(args.name, args.cache_dir or None)
        _print(f"{args.name}: ready in {path}")
    elif args.action == "verify":
        folder = Path(args.data_dir or args.cache_dir or "~/.cache/hmrnn").expanduser()
        sub = folder / args.name
        problems = verify_corpus(args.name, sub if sub.is_dir() else folder)
        if problems:
            for p in problems:
                _print(f"problem: {p}")
            return EXIT_FAILED
        _print(f"{args.name}: all files present and checked")
    else:
        corpus = load_corpus(args.name, args.data_dir or None, cache_dir=args.cache_dir or None)
        _print(describe(corpus))
    return 0


# -- parser -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hmrnn",
        description="Hierarchical Multiscale LSTMs (Chung, Ahn & Bengio, ICLR 2017).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "train", help="train a character model (default: the embedded synthetic corpus)",
        description="Train a character-level model. Any config field can be overridden as "
                    "section.field=value (e.g. train.lr=0.001 model.rnn=lstm).",
    )
    p.add_argument("--config", help="a config name from configs/ (e.g. ptb) or a .toml path")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in run.out_dir from its last checkpoint")
    p.add_argument("--no-report", action="store_true",
                   help="skip the final test evaluation and sample")
    p.add_argument("overrides", nargs="*", metavar="section.field=value",
                   help="config overrides, e.g. train.max_minutes=30 data.corpus=ptb")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="bits per character of a checkpoint on a split or a file")
    p.add_argument("checkpoint", help="a checkpoint file or a run folder (uses its last.pt)")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--file", help="score this UTF-8 text file instead of a corpus split")
    p.add_argument("--ptb-format", action="store_true",
                   help="the file is space-separated symbols, one line per sentence (as PTB)")
    p.add_argument("--corpus", help="corpus name (default: the one the model was trained on)")
    p.add_argument("--data-dir", help="folder holding the corpus files")
    p.add_argument("--batch-size", type=int, default=64, help="parallel evaluation streams")
    p.add_argument("--boundary", choices=["step", "sample", "soft"],
                   help="evaluate an HM-LSTM with this boundary mode instead of its own")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("sample", help="generate text from a checkpoint, streamed as it comes")
    p.add_argument("checkpoint")
    p.add_argument("--length", type=int, default=500)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest (0: all)")
    p.add_argument("--prime", default="", help="text the model reads first")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser(
        "inspect", help="boundary map, hidden-norm map, HTML segments and counts of a text",
        description="Run an HM-LSTM checkpoint over a text and write what it did: "
                    "boundary_map.png (Figure 3), hidden_norms.png (Figure 4), segments.html "
                    "and summary.json (UPDATE/COPY/FLUSH counts, boundary scores).",
    )
    p.add_argument("checkpoint")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="the text to read")
    source.add_argument("--file", help="a UTF-8 text file to read")
    source.add_argument("--synthetic", type=int, metavar="CHARS",
                        help="this many characters of the synthetic language, scored against "
                             "its true word and phrase boundaries")
    p.add_argument("--ptb-format", action="store_true",
                   help="the file is space-separated symbols, one line per sentence (as PTB)")
    p.add_argument("--seed", type=int, default=1, help="seed of the --synthetic text")
    p.add_argument("--out", default="inspect", help="output folder (default: ./inspect)")
    p.add_argument("--width", type=int, default=90, help="characters per row of the figures")
    p.add_argument("--max-chars", type=int, default=2000, help="read at most this many")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("data", help="download, verify or describe a corpus")
    p.add_argument("action", choices=["download", "verify", "describe"])
    p.add_argument("name", help="ptb, text8, enwik8 (download/verify); any corpus (describe)")
    p.add_argument("--data-dir", help="folder with local copies")
    p.add_argument("--cache-dir", help="download cache (default ~/.cache/hmrnn)")
    p.set_defaults(func=cmd_data)

    from hmrnn.cli.bench import add_arguments as add_bench_arguments
    from hmrnn.cli.bench import run as run_bench

    p = sub.add_parser("bench", help="speed against PyTorch's fused LSTM, side by side",
                       description="Time training steps and inference of the HM-LSTM and "
                                   "an nn.LSTM model of the same sizes; print one table.")
    add_bench_arguments(p)
    p.set_defaults(func=run_bench)

    from hmrnn.cli.handwriting import add_parser as add_handwriting_parser

    add_handwriting_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from hmrnn.data import DataError
    from hmrnn.training.checkpoint import CheckpointError
    from hmrnn.training.config import ConfigError
    from hmrnn.training.trainer import TrainingError

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # overrides may come before or after the flags of `train`
        if args.command != "train" or any(not a.lstrip("-").count("=") for a in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    name = " ".join(["hmrnn", args.command, *([args.action] if "action" in args else [])])
    try:
        return int(args.func(args))
    except (DataError, ConfigError, CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingError as e:
        print(f"{name}: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())

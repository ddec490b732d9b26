"""``hmrnn train``: train a character model, then report on the test split."""

from __future__ import annotations

import argparse
from typing import Any

from hmrnn.cli._common import config_list, corpus_advice


def cmd_train(args: argparse.Namespace) -> int:
    """Train a character model with the generic trainer, then report on the test split."""
    from hmrnn.data import Vocab
    from hmrnn.tasks.charlm.build import build_charlm, corpus_from_config
    from hmrnn.tasks.charlm.task import CharLMTask
    from hmrnn.training.session import run_training

    def make_task(config: Any, checkpoint: Any, context: Any, say: Any) -> CharLMTask:
        with corpus_advice("data.data_dir=PATH", download="train with data.download=true"):
            corpus = corpus_from_config(config.data)
        if checkpoint is not None and Vocab.from_list(checkpoint["vocab"]) != corpus.vocab:
            raise ValueError("--resume: the corpus's vocabulary differs from the checkpoint's")
        model = build_charlm(config.model, len(corpus.vocab)).to(context.device)
        say(f"model: {sum(p.numel() for p in model.parameters()):,} parameters, "
            f"vocabulary {len(corpus.vocab)}, device {context.device}, "
            f"{context.world_size} process(es)")
        return CharLMTask(model, corpus, config, context)

    def report(trainer: Any, task: Any, say: Any) -> None:
        _final_report(trainer, task.corpus, say)

    return run_training(args.config, args.overrides, kind="charlm", resume=args.resume,
                        make_task=make_task, report=None if args.no_report else report,
                        overwrite=args.overwrite, print_config=args.print_config)


def _final_report(trainer: Any, corpus: Any, say: Any) -> None:
    """Test BPC of the best model, its boundaries against the true segmentation, whether
    a hierarchy formed (in words), and a sample."""
    import torch

    from hmrnn.analysis.boundaries import format_scores, segmentation_scores
    from hmrnn.analysis.verdict import hierarchy_summary, hierarchy_verdict
    from hmrnn.tasks.charlm.task import evaluate_lm, sample_text, segment_references
    from hmrnn.training.checkpoint import load_checkpoint

    context = trainer.context
    if context.broadcast_flag(trainer.best_path.exists()):
        if context.is_main:
            trainer.model.load_state_dict(load_checkpoint(trainer.best_path)["model"])
        context.broadcast_module(trainer.model)  # other nodes may not see run.out_dir
    cfg = trainer.config.train
    device = context.device
    result = evaluate_lm(trainer.model, corpus.splits["test"], batch_size=cfg.eval_batch_size,
                         seq_len=cfg.seq_len, device=device, context=context,
                         progress=trainer.config.run.progress and context.is_main)
    trainer.record("test", {"loss": result.nll, "bpc": result.bpc, "chars": result.chars,
                            **({"z": result.boundary_rates()} if result.boundary is not None
                               else {})})
    say(f"test: {result.bpc:.4f} bits per character over {result.chars:,} characters "
        f"(best checkpoint)")
    if result.boundary is not None and context.is_main:  # the whole split's, on every rank
        say("boundary rates: " + " ".join(
            f"layer{l + 1}={r:.3f}" for l, r in enumerate(result.boundary_rates())))
        z = result.boundary > 0.5
        references = segment_references(corpus, "test")
        if corpus.boundaries is not None:  # the synthetic corpus's true word and phrase ends
            scores = segmentation_scores(z, None, references)
        else:
            scores = segmentation_scores(z, corpus.vocab.decode(corpus.splits["test"][:-1]))
        say("boundaries against the true segmentation (test split; tol1 allows one step):")
        say(format_scores(scores))
        say("hierarchy (test split):")
        for line in hierarchy_verdict(hierarchy_summary(z, references)):
            say(f"  {line}")
    if context.is_main:
        say("sample:")
        text = "".join(sample_text(trainer.model, corpus.vocab, length=300, device=device,
                                   generator=torch.Generator().manual_seed(0)))
        say(text)
        say(f"checkpoints: {trainer.best_path} (best), {trainer.last_path} (last)")



def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``train`` on ``hmrnn``'s subparsers."""
    p = sub.add_parser(
        "train", help="train a character model (default: the embedded synthetic corpus)",
        description="Train a character-level model. Any config field can be overridden as "
                    "section.field=value (e.g. train.lr=0.001 model.rnn=lstm "
                    "model.hidden_size=256,128,64 or model.hidden_size=[256,128,64]).",
    )
    p.add_argument("--config",
                   help=f"a packaged config ({config_list(handwriting=False)}) or a .toml "
                        "path (default: the built-in defaults, which configs/small.toml "
                        "spells out)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (file, overrides; with --resume the "
                        "checkpoint's) as TOML and exit without training")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in run.out_dir from its last checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in run.out_dir (without it, a new run goes "
                        "to a numbered folder beside it: runs/default-2, ...)")
    p.add_argument("--no-report", action="store_true",
                   help="skip the final test evaluation and sample")
    p.add_argument("overrides", nargs="*", metavar="section.field=value",
                   help="config overrides, e.g. train.max_minutes=30 data.corpus=ptb")
    p.set_defaults(func=cmd_train)
    return p

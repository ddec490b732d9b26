"""The command line tells the truth about itself: ``--version``, every flag's help and
default, ``--print-config``, list overrides, hints that name a form the command accepts,
``inspect --synthetic N`` reading N characters, ``data describe`` / ``data verify``, and
``sample``'s greedy mode and ``--num-samples``."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomllib
from helpers import error_line

import hmrnn
from hmrnn.cli import build_parser, main
from hmrnn.training.config import load_config


def _parsers(parser: argparse.ArgumentParser, name: str = "hmrnn"
             ) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every parser of ``hmrnn`` with its command line, subcommands included."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


@pytest.fixture
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """Help on one line per flag, so that a test can look for a phrase in it."""
    monkeypatch.setenv("COLUMNS", "1000")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained character model whose vocabulary is the synthetic language's."""
    from hmrnn.data.synthetic import alphabet
    from hmrnn.tasks.charlm.build import build_charlm
    from hmrnn.training.checkpoint import save_checkpoint

    config = load_config(None, {"model.hidden_size": "6,5,4", "model.embedding_size": "4",
                                "model.output_size": "5"})
    vocab = list(alphabet(spaces=True))
    model = build_charlm(config.model, len(vocab))
    return save_checkpoint(tmp_path_factory.mktemp("cli-options") / "m.pt", {
        "kind": "charlm", "config": config.to_dict(), "model": model.state_dict(),
        "vocab": vocab})


def test_version_is_the_package_metadata(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def version() -> str:
        with pytest.raises(SystemExit) as exit_:
            main(["--version"])
        assert exit_.value.code == 0
        return capsys.readouterr().out.strip()

    assert version() == f"hmrnn {importlib.metadata.version('hmrnn')}"

    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)  # a bare source tree
    monkeypatch.setattr(hmrnn, "__version__", "0.0.0+source")
    assert version() == "hmrnn 0.0.0+source"


def test_every_flag_has_help_and_shows_its_default(wide: None) -> None:
    for command, parser in _parsers(build_parser()):
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._VersionAction
                          | argparse._SubParsersAction):
                continue
            where = f"{command} {action.dest}"
            assert action.help, f"{where} has no help text"
            default = action.default
            if default is None or default is False or default in ("", []):
                continue  # nothing to show (HelpFormatter's rule)
            shown = parser._get_formatter()._expand_help(action)  # this flag's help, as printed
            assert shown.endswith(f"(default: {default})"), where
            assert shown in text, where


def test_help_texts_name_what_exists(wide: None, capsys: pytest.CaptureFixture[str]) -> None:
    def help_of(*command: str) -> str:
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        return capsys.readouterr().out

    text = help_of("sample")
    for phrase in ("characters to generate after the --prime text (default: 500)",
                   "0 is greedy decoding", "(default: 1.0)", "same seed gives the same samples"):
        assert phrase in text
    assert "the corpus split to score (not with --file) (default: test)" in help_of("eval")
    text = help_of("handwriting", "sample")
    assert "the split --prime-line counts in (default: valid)" in text
    assert "--line" not in text.replace("--prime-line", "")
    assert "the split --line counts in (default: valid)" in help_of("handwriting", "draw")
    text = help_of("train")  # the character configs, not the handwriting ones
    assert "(enwik8, ptb, ptb-control, ptb-lncwrnn, ptb-lnlstm, ptb-sample, ptb-soft, " \
           "ptb-step, small, text8)" in text
    assert "(iamondb, iamondb-lstm)" in help_of("handwriting", "train")


def test_a_broken_packaged_config_breaks_only_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from hmrnn.training import config

    for name in ("ptb", "text8"):
        (tmp_path / f"{name}.toml").write_text(config.config_path(name).read_text())
    (tmp_path / "broken.toml").write_text("[data\ncorpus = 'ptb'\n")
    monkeypatch.setattr(config, "CONFIG_DIR", tmp_path)
    text = " ".join(build_parser().format_help().split())  # every command's parser is built
    assert text.startswith("usage: hmrnn")
    assert main(["train", "--print-config", "--config", "ptb"]) == 0
    assert "corpus = \"ptb\"" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "a packaged config (ptb, text8)" in " ".join(capsys.readouterr().out.split())
    assert main(["train", "--config", "broken"]) == 2
    assert "is not valid TOML" in error_line(capsys)
    assert main(["train", "--config", "nope"]) == 2
    assert "no config named 'nope'; known: broken, ptb, text8" in error_line(capsys)


def test_print_config_prints_the_resolved_config_and_trains_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    overrides = ["model.hidden_size=[64,64,32]", "train.boundary_rate=[0.1, 0.02]",
                 "data.fractions=0.8,0.1,0.1", f"run.out_dir={out}"]
    assert main(["train", "--config", "text8", "--print-config", *overrides]) == 0
    printed = tomllib.loads(capsys.readouterr().out)
    expected = load_config("text8", dict(o.split("=", 1) for o in overrides))
    assert printed == expected.to_dict()
    assert printed["model"]["hidden_size"] == [64, 64, 32]
    assert printed["train"]["boundary_rate"] == [0.1, 0.02]
    assert not out.exists()
    assert main(["handwriting", "train", "--data", str(tmp_path), "--print-config",
                 f"run.out_dir={out}"]) == 0
    printed = tomllib.loads(capsys.readouterr().out)
    assert printed["data"] == {**printed["data"], "corpus": "iamondb",
                               "data_dir": str(tmp_path.resolve())}
    assert not out.exists()


@pytest.mark.parametrize("override", ["model.hidden_size=[64,64", "model.hidden_size=[a]",
                                      "train.boundary_rate=[0.2] x"])
def test_a_malformed_list_is_one_line(override: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--print-config", override]) == 2
    key, value = override.split("=", 1)
    line = error_line(capsys)
    assert f"{key}: cannot read {value!r} as a list" in line and "[1, 2, 3]" in line


def test_hints_name_a_form_the_command_accepts(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["train", "--config", "text8", f"data.cache_dir={tmp_path}",
                 f"run.out_dir={tmp_path / 'run'}", "run.progress=false"])
    assert code == 2
    line = error_line(capsys)
    assert line == (
        f"hmrnn train: error: corpus 'text8' (text8) was not found in {tmp_path / 'text8'}; "
        "run `hmrnn data download text8` (or train with data.download=true), or give the "
        "folder that holds it (data.data_dir=PATH)")
    for command in (["eval", str(checkpoint), "--corpus", "text8"],
                    ["data", "describe", "text8", "--cache-dir", str(tmp_path)]):
        assert main([*command, "--data-dir", str(tmp_path)]) == 2
        line = error_line(capsys)
        assert line.endswith(f"was not found in {tmp_path} and {tmp_path / 'text8'}; run "
                             "`hmrnn data download text8`, or give the folder that holds it "
                             "(--data-dir PATH)"), line
    assert main(["data", "describe", "tinyshakespeare", "--cache-dir", str(tmp_path)]) == 2
    assert error_line(capsys).endswith(
        f"(input.txt) was not found in {tmp_path / 'tinyshakespeare'}; give the folder that "
        "holds it (--data-dir PATH)")
    assert main(["handwriting", "draw", "--line", "0", "--out", str(tmp_path / "x.png")]) == 2
    line = error_line(capsys)
    assert "pass --data PATH" in line and "data.data_dir" not in line
    missing = tmp_path / "no-such-folder"
    for command in (["train", f"run.out_dir={tmp_path / 'hw'}"],
                    ["draw", "--line", "0", "--out", str(tmp_path / "x.png")]):
        assert main(["handwriting", *command, "--data", str(missing)]) == 2
        line = error_line(capsys)
        assert f"{missing} does not exist" in line and "neither" not in line


def test_inspect_synthetic_reads_as_many_characters_as_asked(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "inspect"
    assert main(["inspect", str(checkpoint), "--synthetic", "3000", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "note:" not in printed  # nothing cut
    layer_lines = [line for line in printed.splitlines() if line.startswith("layer3:")]
    assert layer_lines and layer_lines[0].endswith("(no boundary detector)")  # no rate 0.000
    assert "boundaries against the true segmentation (P/R/F1" in printed  # the table's header
    counts = json.loads((out / "summary.json").read_text())["operation_counts"]
    assert all(c["update"] + c["copy"] + c["flush"] == 3000 for c in counts)
    text = "ab. " * 10
    assert main(["inspect", str(checkpoint), "--text", text, "--max-chars", "25",
                 "--out", str(out)]) == 0
    assert "note: reading the first 25 of 40 characters (--max-chars)" in capsys.readouterr().out
    counts = json.loads((out / "summary.json").read_text())["operation_counts"]
    assert all(c["update"] + c["copy"] + c["flush"] == 25 for c in counts)


def test_data_describe_and_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "describe", "synthetic"]) == 0
    text = capsys.readouterr().out
    chars = load_config().data.synthetic_chars  # what `hmrnn train` reads
    assert f"train: {chars:,} symbols" in text and f"valid:  {chars // 10:,} symbols" in text
    assert main(["data", "verify", "ptb", "--data-dir", str(tmp_path)]) == 2
    line = error_line(capsys)
    assert "ptb failed verification: ptb.char.train.txt is missing" in line


def test_sample_greedy_and_several_samples(
    checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def sample(*flags: str) -> str:
        assert main(["sample", str(checkpoint), "--length", "30", "--prime", "ab", *flags]) == 0
        return capsys.readouterr().out

    greedy = sample("--temperature", "0", "--seed", "1")
    assert greedy == sample("--temperature", "0", "--seed", "2")  # argmax: no randomness
    from hmrnn.tasks.charlm.pretrained import load

    assert greedy == "ab" + load(checkpoint).generate("ab", length=30, temperature=0) + "\n"
    three = sample("--num-samples", "3", "--seed", "4")
    assert three == sample("--num-samples", "3", "--seed", "4")
    first = sample("--seed", "4")
    samples = three.split("\n---\n")
    assert len(samples) == 3 and samples[0] + "\n" == first
    assert [len(s) for s in samples] == [32, 32, 33]  # "ab", 30 characters; the last: "\n"
    assert all(s.startswith("ab") for s in samples) and len(set(samples)) > 1

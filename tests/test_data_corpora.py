"""Tests of the corpus readers and load_corpus (hmrnn.data.corpora)."""

import pickle
from pathlib import Path

import numpy as np
import pytest

import hmrnn.data.corpora as corpora
from hmrnn.data import (
    SPLIT_FRACTIONS,
    CorpusNotFoundError,
    DataError,
    UnknownSymbolError,
    Vocab,
    describe,
    load_corpus,
    read_enwik8,
    read_ptb,
    read_text8,
    read_text_file,
    split_sizes,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PTB_DIR = SHARED_DATA / "ptb"
needs_ptb = pytest.mark.skipif(
    not (PTB_DIR / "ptb.char.train.txt").is_file(), reason="the PTB files are not available"
)
needs_shakespeare = pytest.mark.skipif(
    not (SHARED_DATA / "tinyshakespeare" / "input.txt").is_file(),
    reason="tiny-shakespeare is not available",
)


def _ptb_char_file(word_text: str) -> str:
    """Mikolov's rule for ptb.char.*.txt from a word-level text (data/README.md)."""
    lines = word_text.split("\n")
    t = "\n".join("_".join(line.split()) for line in lines[:-1]) + "\n"
    return " ".join(t) + " "


def _write_ptb(folder: Path, splits: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, words in splits.items():
        (folder / f"ptb.char.{split}.txt").write_text(_ptb_char_file(words))
    return folder


SMALL_PTB = {
    "train": " the cat sat \n on the mat \n <unk> N \n",
    "valid": " the mat \n",
    "test": " a cat \n no \n",
}


@needs_ptb
def test_real_ptb_symbol_counts_and_vocab():
    corpus = read_ptb(PTB_DIR)
    sizes = {split: len(ids) for split, ids in corpus.splits.items()}
    assert sizes == {"train": 5_017_482, "valid": 393_042, "test": 442_423}
    assert len(corpus.vocab) == 50
    assert "".join(corpus.vocab.symbols) == ("\n#$&'*-./0123456789<>N\\_abcdefghijklmnopqrstuvwxyz")
    newline = corpus.vocab.encode("\n")[0]
    assert int((corpus.splits["train"] == newline).sum()) == 42_068
    first_line = corpus.vocab.decode(corpus.splits["train"][:60]).split("\n")[0]
    assert first_line.startswith("aer_banknote_berlitz_calloway_")
    assert load_corpus("ptb", SHARED_DATA).splits["test"].tolist() == corpus.splits["test"].tolist()


@needs_shakespeare
def test_real_tinyshakespeare():
    corpus = load_corpus("tinyshakespeare", SHARED_DATA)
    assert corpus.name == "tinyshakespeare"
    assert {k: len(v) for k, v in corpus.splits.items()} == {
        "train": 1_003_855,
        "valid": 55_770,
        "test": 55_769,
    }
    assert len(corpus.vocab) == 65
    assert corpus.vocab.decode(corpus.splits["train"][:14]) == "First Citizen:"


def test_read_ptb_small(tmp_path):
    folder = _write_ptb(tmp_path / "ptb", SMALL_PTB)
    corpus = read_ptb(folder)
    assert corpus.name == "ptb" and corpus.boundaries is None
    decode = corpus.vocab.decode
    assert decode(corpus.splits["train"]) == "the_cat_sat\non_the_mat\n<unk>_N\n"
    assert decode(corpus.splits["valid"]) == "the_mat\n"
    assert corpus.vocab == Vocab.from_text("the_cat_sat\non_the_mat\n<unk>_N\n")
    # The parent folder works too.
    np.testing.assert_array_equal(read_ptb(tmp_path).splits["train"], corpus.splits["train"])


def test_read_ptb_names_the_split_of_an_unknown_character(tmp_path):
    folder = _write_ptb(tmp_path, {**SMALL_PTB, "test": " the zoo \n"})
    with pytest.raises(
        UnknownSymbolError,
        match=r"^the test split of ptb: character 'z' at "
        r"position 4 is not in the vocabulary \(16 symbols\)$",
    ):
        read_ptb(folder)


def test_read_ptb_refuses_word_level_and_missing_files(tmp_path):
    _write_ptb(tmp_path, SMALL_PTB)
    (tmp_path / "ptb.char.valid.txt").write_text(" the mat \n")
    with pytest.raises(DataError, match=r"line 1 has the token 'the' of more than one character"):
        read_ptb(tmp_path)
    (tmp_path / "ptb.char.valid.txt").unlink()
    with pytest.raises(DataError, match=f"data file {tmp_path / 'ptb.char.valid.txt'} does not"):
        read_ptb(tmp_path)


def test_split_sizes():
    assert split_sizes(100_000_000) == (90_000_000, 5_000_000, 5_000_000)
    assert split_sizes(1000) == (900, 50, 50)
    assert split_sizes(1001) == (901, 50, 50)
    assert split_sizes(10, (0.5, 0.3, 0.2)) == (5, 3, 2)
    with pytest.raises(DataError, match="must sum to 1"):
        split_sizes(100, (0.9, 0.05, 0.04))
    with pytest.raises(DataError, match="three positive numbers"):
        split_sizes(100, (0.9, 0.1))
    with pytest.raises(DataError, match="three positive numbers"):
        split_sizes(100, (1.1, -0.05, -0.05))
    with pytest.raises(DataError, match="5 symbols are too few to split"):
        split_sizes(5)


def test_read_text8_small(tmp_path):
    rng = np.random.default_rng(0)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz ", dtype=np.uint8)
    data = letters[rng.integers(0, 27, size=2000)]
    data[1900:] = ord("a")  # valid and test only use characters seen in train
    (tmp_path / "text8").write_bytes(data.tobytes())
    corpus = read_text8(tmp_path)
    assert [len(corpus.splits[s]) for s in ("train", "valid", "test")] == [1800, 100, 100]
    assert corpus.vocab == Vocab.from_text(data[:1800].tobytes().decode())
    text = "".join(corpus.vocab.decode(corpus.splits[s]) for s in ("train", "valid", "test"))
    assert text == data.tobytes().decode()
    assert load_corpus("text8", tmp_path, fractions=(0.5, 0.25, 0.25)).splits["test"].size == 500
    (tmp_path / "text8").write_bytes(b"abc\xe9def")
    with pytest.raises(DataError, match=r"is not text8: byte 0xe9 at offset 3 is not ASCII"):
        read_text8(tmp_path)


def test_read_enwik8_small_is_byte_level(tmp_path):
    text = "<page>Zürich — ½ €</page>\n" * 40
    raw = text.encode("utf-8")
    (tmp_path / "enwik8").mkdir()
    (tmp_path / "enwik8" / "enwik8").write_bytes(raw)
    corpus = read_enwik8(tmp_path)
    sizes = split_sizes(len(raw))
    assert [len(corpus.splits[s]) for s in ("train", "valid", "test")] == list(sizes)
    decoded = "".join(corpus.vocab.decode(corpus.splits[s]) for s in ("train", "valid", "test"))
    assert decoded.encode("latin-1") == raw
    assert len(corpus.vocab) == len(set(raw))


def test_read_enwik8_unknown_byte_in_valid(tmp_path):
    (tmp_path / "enwik8").write_bytes(b"a" * 90 + b"ab" + b"a" * 8)
    with pytest.raises(
        UnknownSymbolError,
        match=r"^the valid split of enwik8: character 'b' "
        r"at position 1 ",
    ):
        read_enwik8(tmp_path)


def test_read_text_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("ab\nba\n" * 100, encoding="utf-8")
    corpus = read_text_file(path, (0.8, 0.1, 0.1))
    assert corpus.name == f"file:{path}"
    assert [len(corpus.splits[s]) for s in ("train", "valid", "test")] == [480, 60, 60]
    assert corpus.vocab.to_list() == ["\n", "a", "b"]
    same = load_corpus(f"file:{path}", fractions=(0.8, 0.1, 0.1))
    np.testing.assert_array_equal(same.splits["valid"], corpus.splits["valid"])
    assert load_corpus(str(path)).splits["train"].size == 540


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"abc\x00def" * 10, r"looks like a binary file \(NUL byte at offset 3\)"),
        (b"abcdef\xff\xfe" * 10, r"is not UTF-8 text: the byte at offset 6 cannot be decoded"),
    ],
    ids=["empty", "nul-bytes", "not-utf8"],
)
def test_read_text_file_refuses_bad_files(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_text_file(path)


def test_read_text_file_missing_and_directory(tmp_path):
    with pytest.raises(DataError, match=f"data file {tmp_path / 'nope.txt'} does not exist"):
        read_text_file(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="is not a regular file"):
        read_text_file(tmp_path)


def test_load_corpus_unknown_name_lists_valid_ones():
    with pytest.raises(DataError) as info:
        load_corpus("txt8")
    message = str(info.value)
    assert message.startswith("unknown corpus 'txt8'; did you mean 'text8'? valid names are ")
    assert all(name in message for name in ("synthetic", "ptb", "enwik8", "tinyshakespeare"))
    assert "\n" not in message


def test_load_corpus_looks_in_the_cache_and_says_where(tmp_path, monkeypatch):
    with pytest.raises(CorpusNotFoundError) as info:
        load_corpus("enwik8", cache_dir=tmp_path)
    missing = f"corpus 'enwik8' (enwik8) was not found in {tmp_path / 'enwik8'}"
    assert info.value.missing == missing
    assert str(info.value) == (
        f"{missing}; pass the folder that holds it as data_dir, or download=True to download it"
    )  # the library's own arguments: each command says its own (tests/test_cli_options.py)
    assert (info.value.name, info.value.downloadable) == ("enwik8", True)
    with pytest.raises(CorpusNotFoundError, match=f"not found in {tmp_path} and "
                                                  f"{tmp_path / 'ptb'}; pass the folder"):
        load_corpus("ptb", tmp_path)
    with pytest.raises(CorpusNotFoundError) as info:
        load_corpus("tinyshakespeare", cache_dir=tmp_path)
    assert str(info.value).endswith("as data_dir") and not info.value.downloadable
    assert pickle.loads(pickle.dumps(info.value)).args == info.value.args
    _write_ptb(tmp_path / "ptb", SMALL_PTB)
    assert load_corpus("ptb", cache_dir=tmp_path).splits["valid"].size == 8
    monkeypatch.setattr(corpora, "DEFAULT_CACHE_DIR", tmp_path)
    assert load_corpus("ptb").splits["valid"].size == 8


def test_load_corpus_downloads_only_when_asked(tmp_path, monkeypatch):
    calls = []

    def fake_download(name, cache_dir):
        calls.append((name, cache_dir))
        (cache_dir / name).mkdir(parents=True)
        (cache_dir / name / "text8").write_bytes(b"ab " * 100)
        return cache_dir / name

    monkeypatch.setattr(corpora, "fetch", fake_download)
    with pytest.raises(CorpusNotFoundError, match="download=True"):
        load_corpus("text8", cache_dir=tmp_path)
    assert calls == []
    corpus = load_corpus("text8", cache_dir=tmp_path, download=True)
    assert calls == [("text8", tmp_path)]
    assert corpus.name == "text8" and len(corpus.splits["train"]) == 270
    load_corpus("text8", cache_dir=tmp_path, download=True)
    assert len(calls) == 1  # found in the cache the second time


def test_load_corpus_refuses_options_that_do_not_apply(tmp_path):
    with pytest.raises(DataError, match=r"options \['seed'\] only apply to the synthetic corpus"):
        load_corpus("ptb", tmp_path, seed=3)
    with pytest.raises(DataError, match="'ptb' has its own splits"):
        load_corpus("ptb", tmp_path, fractions=(0.8, 0.1, 0.1))
    assert tuple(SPLIT_FRACTIONS) == (0.9, 0.05, 0.05)


def test_describe():
    corpus = load_corpus("synthetic", train_chars=1200, valid_chars=300, test_chars=300)
    lines = describe(corpus).splitlines()
    assert lines[0] == "corpus: synthetic"
    assert lines[1] == f"vocabulary: {len(corpus.vocab)} symbols"
    assert lines[2:5] == ["train: 1,200 symbols", "valid:   300 symbols", "test:    300 symbols"]
    assert lines[5] == "boundaries: word, phrase, sentence"
    assert lines[6] == "sample: " + repr(corpus.vocab.decode(corpus.splits["train"][:60]))

"""Tests of hmrnn.data.vocab and hmrnn.data.errors."""

import doctest
import pickle

import numpy as np
import pytest
import torch

import hmrnn.data.batching
import hmrnn.data.vocab
from hmrnn.data import DataError, UnknownSymbolError, Vocab


def test_from_text_is_sorted_unique_and_deterministic():
    v = Vocab.from_text("the cat sat")
    assert v.to_list() == [" ", "a", "c", "e", "h", "s", "t"]
    assert Vocab.from_text("tas ceh t") == v
    assert Vocab.from_text(iter(["b", "a", "b"])).to_list() == ["a", "b"]
    assert len(v) == 7


def test_encode_decode_round_trip():
    text = "hello, wörld\n"
    v = Vocab.from_text(text)
    ids = v.encode(text)
    assert ids.dtype == np.int64 and ids.shape == (len(text),)
    assert [v.symbols[i] for i in ids] == list(text)
    assert v.decode(ids) == text
    assert v.decode(torch.from_numpy(ids).reshape(1, -1)) == text
    assert v.decode([]) == ""
    assert v.encode("").shape == (0,)


def test_from_list_keeps_any_order():
    v = Vocab.from_list(["z", "a", "\n"])
    assert v.encode("a\nz").tolist() == [1, 2, 0]
    assert Vocab.from_list(v.to_list()) == v
    assert v != Vocab.from_text("za\n")
    assert hash(Vocab.from_list(["z", "a", "\n"])) == hash(v)


def test_characters_beyond_the_dense_table():
    # Code points above 65535 take the binary-search path; both paths must agree.
    text = "a😀b𝄞a"
    v = Vocab.from_text(text)
    assert v.decode(v.encode(text)) == text
    with pytest.raises(UnknownSymbolError, match=r"character '🙂' at position 2 "):
        v.encode("ab🙂")


def test_unknown_symbol_message_names_character_position_and_size():
    v = Vocab.from_text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWX")
    assert len(v) == 50
    with pytest.raises(UnknownSymbolError) as info:
        v.encode("abcdefghijklmnopqΩrΩ")
    assert str(info.value) == "character 'Ω' at position 17 is not in the vocabulary (50 symbols)"
    assert (info.value.symbol, info.value.position) == ("Ω", 17)
    assert isinstance(info.value, DataError) and isinstance(info.value, ValueError)
    with pytest.raises(UnknownSymbolError, match=r"^the valid split: character '\\n' at"):
        v.encode("ab\n", where="the valid split")


def test_unknown_symbol_error_pickles():
    err = pickle.loads(pickle.dumps(UnknownSymbolError("x", 3, 9, "here")))
    assert str(err) == "here: character 'x' at position 3 is not in the vocabulary (9 symbols)"


def test_encode_code_points_of_bytes():
    v = Vocab([chr(0), chr(200), "a"])
    codes = np.array([200, 97, 0, 200], dtype=np.uint8)
    assert v.encode_code_points(codes).tolist() == [1, 2, 0, 1]
    with pytest.raises(UnknownSymbolError, match=r"'b' at position 1 "):
        v.encode_code_points(np.array([97, 98], dtype=np.uint8))


@pytest.mark.parametrize(
    ("symbols", "message"),
    [
        ([], "at least one symbol"),
        (["a", "bc"], "single character, got 'bc'"),
        (["a", 1], "single character, got 1"),
        (["a", "b", "a"], "symbol 'a' appears more than once"),
    ],
)
def test_invalid_vocabularies(symbols, message):
    with pytest.raises(DataError, match=message):
        Vocab(symbols)


def test_decode_rejects_ids_outside_the_vocabulary():
    v = Vocab.from_text("ab")
    with pytest.raises(DataError, match="id 2 is outside the vocabulary of 2 symbols"):
        v.decode([0, 2])
    with pytest.raises(DataError, match="id -1 is outside"):
        v.decode(np.array([-1]))
    with pytest.raises(TypeError, match="expects a str"):
        v.encode(["a"])


@pytest.mark.parametrize("module", [hmrnn.data.vocab, hmrnn.data.batching])
def test_docstring_examples_run(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0

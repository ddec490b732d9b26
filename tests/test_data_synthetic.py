"""Tests of the synthetic hierarchical language (hmrnn.data.synthetic)."""

import numpy as np
import pytest

from hmrnn.data import DataError, Vocab, generate, load_corpus, synthetic_corpus
from hmrnn.data.synthetic import alphabet, lexicon


def _category(word):
    """(category, plural) of a word form; plural is None where number does not apply."""
    lex = lexicon()
    for category in ("DET", "ADJ", "PREP"):
        if word in lex[category]:
            return category, None
    if word in lex["NOUN"]:
        return "NOUN", False
    if word.endswith("s") and word[:-1] in lex["NOUN"]:
        return "NOUN", True
    if word in lex["VERB"]:
        return "VERB", True  # the bare stem agrees with a plural subject
    if word.endswith("s") and word[:-1] in lex["VERB"]:
        return "VERB", False
    raise AssertionError(f"{word!r} is not a word of the lexicon")


def _parse_noun_phrase(words, i):
    """Check NP[n] -> DET[n] ADJ? NOUN[n] from words[i]; return (end index, plural)."""
    det = lexicon()["DET"]
    determiner = words[i]
    assert determiner in det
    i += 1
    if _category(words[i])[0] == "ADJ":
        i += 1
    category, plural = _category(words[i])
    assert category == "NOUN"
    assert determiner in (det[2:] if plural else det[:2] + det[4:]), "DET agrees with NOUN"
    return i + 1, plural


def _parse_sentence(words):
    """Check the grammar of one sentence; return the word index ending each phrase."""
    end, plural = _parse_noun_phrase(words, 0)
    ends = [end - 1]
    category, verb_plural = _category(words[end])
    assert category == "VERB" and verb_plural == plural, "the verb must agree with its subject"
    end, _ = _parse_noun_phrase(words, end + 1)
    ends.append(end - 1)
    if end < len(words):
        assert _category(words[end])[0] == "PREP"
        end, _ = _parse_noun_phrase(words, end + 1)
        ends.append(end - 1)
    assert end == len(words)
    return ends


def test_lexicon_is_fixed_distinct_and_sized():
    lex = lexicon()
    assert {k: len(v) for k, v in lex.items()} == {
        "DET": 6,
        "ADJ": 30,
        "NOUN": 60,
        "VERB": 40,
        "PREP": 8,
    }
    words = [w for ws in lex.values() for w in ws]
    assert len(set(words)) == len(words)
    assert all("s" not in w and w.isalpha() and w.islower() for w in words)
    assert all(2 <= len(w) <= 8 for w in words)
    assert all(len(w) <= 7 for w in lex["NOUN"] + lex["VERB"])  # with the "s" suffix <= 8
    assert alphabet(spaces=False) == "\n.abcdefghijklmnoprstuvwz"
    assert alphabet(spaces=True) == "\n .abcdefghijklmnoprstuvwz"


def test_same_seed_same_text_other_seed_other_text():
    a, b = generate(3000, seed=5), generate(3000, seed=5)
    assert a.text == b.text
    for x, y in zip(a[1:], b[1:], strict=True):
        np.testing.assert_array_equal(x, y)
    assert generate(3000, seed=6).text != a.text


def test_text_follows_the_grammar_and_boundaries_mark_last_letters():
    sample = generate(5000, seed=1)
    text = sample.text
    assert len(text) == 5000
    for flags in sample[1:]:
        assert flags.shape == (5000,) and flags.dtype == bool
    # Nested levels: every sentence end is a phrase end, every phrase end a word end.
    assert not (sample.sentence_end & ~sample.phrase_end).any()
    assert not (sample.phrase_end & ~sample.word_end).any()
    # A word ends on a letter followed by a space or the full stop.
    expected_word_end = np.array(
        [c.isalpha() and text[i + 1 : i + 2] in (" ", ".") for i, c in enumerate(text)]
    )
    expected_word_end[-1] = sample.word_end[-1]  # the cut-off end is not known from the text
    np.testing.assert_array_equal(sample.word_end, expected_word_end)
    sentences = text.split(".\n")[:-1]  # the last one may be cut off
    assert len(sentences) > 50
    expected_phrase_end = []
    expected_sentence_end = []
    offset = 0
    for sentence in sentences:
        words = sentence.split(" ")
        word_last = np.cumsum([len(w) + 1 for w in words]) - 2 + offset
        expected_phrase_end += [int(word_last[k]) for k in _parse_sentence(words)]
        expected_sentence_end.append(int(word_last[-1]))
        offset += len(sentence) + 2
    np.testing.assert_array_equal(
        np.flatnonzero(sample.phrase_end)[: len(expected_phrase_end)], expected_phrase_end
    )
    np.testing.assert_array_equal(
        np.flatnonzero(sample.sentence_end)[: len(sentences)], expected_sentence_end
    )
    assert not sample.word_end[[i for i, c in enumerate(text) if c in " .\n"]].any()


def test_without_spaces_the_same_sentences_and_boundaries():
    spaced = generate(4000, seed=3, spaces=True)
    joined = generate(3000, seed=3, spaces=False)
    letters = np.array([c != " " for c in spaced.text])
    assert " " not in joined.text
    assert spaced.text.replace(" ", "")[:3000] == joined.text
    for with_spaces, without in zip(spaced[1:], joined[1:], strict=True):
        np.testing.assert_array_equal(with_spaces[letters][:3000], without)
    assert joined.word_end.sum() > 400


def test_without_agreement_the_same_sentences_with_verbs_of_their_own_number():
    agreeing = generate(6000, seed=3)
    free = generate(6000, seed=3, agreement=False)
    pairs = [(a, b) for a, b in zip(agreeing.text.split(".\n")[:-1], free.text.split(".\n"),
                                    strict=False)]
    assert len(pairs) > 50
    disagreeing = 0
    for a, b in pairs:
        words_a, words_b = a.split(" "), b.split(" ")
        verb = next(i for i, w in enumerate(words_a) if _category(w)[0] == "VERB")
        assert words_a[:verb] + words_a[verb + 1:] == words_b[:verb] + words_b[verb + 1:]
        assert words_a[verb].rstrip("s") == words_b[verb].rstrip("s")
        subject_plural = _category(words_b[verb - 1])[1]
        disagreeing += _category(words_b[verb])[1] != subject_plural
    assert 0.3 < disagreeing / len(pairs) < 0.7  # the verb's number is a coin of its own
    corpus = synthetic_corpus(3000, 300, 300, seed=1, agreement=False)
    assert corpus.vocab == synthetic_corpus(3000, 300, 300, seed=1).vocab


def test_generate_rejects_bad_lengths():
    for bad in (0, -3, 2.5, True):
        with pytest.raises(DataError, match="num_chars must be a positive int"):
            generate(bad)


def test_synthetic_corpus_splits_boundaries_and_vocab():
    corpus = synthetic_corpus(3000, 500, 700, seed=11)
    assert corpus.name == "synthetic"
    assert {k: len(v) for k, v in corpus.splits.items()} == {
        "train": 3000,
        "valid": 500,
        "test": 700,
    }
    assert corpus.vocab == Vocab(alphabet())
    for split, ids in corpus.splits.items():
        assert ids.dtype == np.int64
        flags = corpus.boundaries[split]
        assert set(flags) == {"word", "phrase", "sentence"}
        text = corpus.vocab.decode(ids)
        assert all(flag.shape == ids.shape for flag in flags.values())
        last_letters = [text[i] for i in np.flatnonzero(flags["word"])]
        assert all(c.isalpha() for c in last_letters)
    # Independent seeds per split, and the corpus seed changes every split.
    assert corpus.vocab.decode(corpus.splits["valid"]) not in corpus.vocab.decode(
        corpus.splits["train"]
    )
    other = synthetic_corpus(3000, 500, 700, seed=12)
    assert not np.array_equal(other.splits["train"], corpus.splits["train"])
    again = synthetic_corpus(3000, 500, 700, seed=11)
    for split in corpus.splits:
        np.testing.assert_array_equal(again.splits[split], corpus.splits[split])


def test_default_corpus_vocab_equals_its_train_characters():
    corpus = load_corpus("synthetic")
    assert len(corpus.splits["train"]) == 200_000
    train_text = corpus.vocab.decode(corpus.splits["train"])
    assert Vocab.from_text(train_text) == corpus.vocab
    spaceless = load_corpus(
        "synthetic", train_chars=1000, valid_chars=50, test_chars=50, spaces=False
    )
    assert " " not in spaceless.vocab


def test_the_language_is_predictable():
    # Strong regularities: a character trigram model beats the unigram model by a wide margin
    # on held-out text, so a small LSTM has a lot to learn.
    train = generate(100_000, seed=0).text
    held_out = generate(20_000, seed=1).text

    def cross_entropy(order):
        counts, context_counts = {}, {}
        for i in range(order, len(train)):
            key = train[i - order : i + 1]
            counts[key] = counts.get(key, 0) + 1
            context_counts[key[:-1]] = context_counts.get(key[:-1], 0) + 1
        v = len(alphabet())
        total = 0.0
        for i in range(order, len(held_out)):
            key = held_out[i - order : i + 1]
            p = (counts.get(key, 0) + 0.1) / (context_counts.get(key[:-1], 0) + 0.1 * v)
            total -= np.log2(p)
        return total / (len(held_out) - order)

    unigram, trigram = cross_entropy(0), cross_entropy(2)
    assert unigram > 3.5
    assert trigram < 0.65 * unigram

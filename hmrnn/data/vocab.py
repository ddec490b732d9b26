"""A vocabulary of single-character symbols and the encoding of text into integer ids.

Encoding is vectorised with numpy (one look-up over the text's code points), so that
corpora of hundreds of millions of characters encode in seconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from hmrnn.data.errors import DataError, UnknownSymbolError

_DENSE_LIMIT = 1 << 16  # largest code-point table built for a look-up (512 KiB)


def code_points(text: str) -> np.ndarray:
    """Return the Unicode code points of ``text`` as a ``(len(text),)`` uint32 array."""
    return np.frombuffer(text.encode("utf-32-le"), dtype="<u4")


class Vocab:
    """An ordered set of single-character symbols; symbol ``i`` has id ``i``.

    Args:
        symbols: the symbols in id order, each a ``str`` of length 1, all distinct.

    Example:
        >>> v = Vocab.from_text("hello")
        >>> v.to_list(), v.encode("hole").tolist(), v.decode([2, 0])
        (['e', 'h', 'l', 'o'], [1, 3, 2, 0], 'le')
    """

    def __init__(self, symbols: Sequence[str]):
        symbols = tuple(symbols)
        if not symbols:
            raise DataError("a vocabulary needs at least one symbol, got none")
        seen: set[str] = set()
        for s in symbols:
            if not isinstance(s, str) or len(s) != 1:
                raise DataError(f"every vocabulary symbol must be a single character, got {s!r}")
            if s in seen:
                raise DataError(f"vocabulary symbol {s!r} appears more than once")
            seen.add(s)
        self._symbols = symbols
        codes = np.array([ord(s) for s in symbols], dtype=np.uint32)
        # Sorted code points and the id of each, for a vectorised binary-search look-up.
        self._order = np.argsort(codes, kind="stable").astype(np.int64)
        self._sorted_codes = codes[self._order]

    @classmethod
    def from_text(cls, text: str | Iterable[str]) -> Vocab:
        """Build the vocabulary of the distinct symbols of ``text``, sorted by code point."""
        return cls(sorted(set(text)))

    @classmethod
    def from_list(cls, symbols: Sequence[str]) -> Vocab:
        """Rebuild a vocabulary from :meth:`to_list` (e.g. as stored in a checkpoint)."""
        return cls(symbols)

    def to_list(self) -> list[str]:
        """Return the symbols in id order, a plain list that JSON and checkpoints can store."""
        return list(self._symbols)

    @property
    def symbols(self) -> tuple[str, ...]:
        """The symbols in id order."""
        return self._symbols

    def __len__(self) -> int:
        return len(self._symbols)

    def __contains__(self, symbol: object) -> bool:
        return symbol in self._symbols

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocab):
            return NotImplemented
        return self._symbols == other._symbols

    def __hash__(self) -> int:
        return hash(self._symbols)

    def __repr__(self) -> str:
        return f"Vocab({''.join(self._symbols)!r})"

    def encode_code_points(self, codes: np.ndarray, where: str | None = None) -> np.ndarray:
        """Encode an array of code points (e.g. raw bytes of latin-1 text) into ids.

        Args:
            codes: ``(S,)`` unsigned integer array of code points.
            where: optional name of the text for the error message.

        Returns:
            ``(S,)`` int64 array of ids.

        Raises:
            UnknownSymbolError: naming the first code point that is not in the vocabulary.
        """
        codes = np.asarray(codes)
        if codes.ndim != 1:
            raise ValueError(f"code points must be a 1-D array, got shape {codes.shape}")
        if codes.size == 0:
            return np.zeros(0, dtype=np.int64)
        limit = int(codes.max()) + 1
        if limit <= _DENSE_LIMIT:
            # A dense table is the fastest look-up and covers nearly every text (and bytes).
            table = np.full(limit, -1, dtype=np.int64)
            inside = self._sorted_codes < limit
            table[self._sorted_codes[inside]] = self._order[inside]
            ids = table[codes]
            unknown = ids < 0
        else:
            pos = np.minimum(np.searchsorted(self._sorted_codes, codes), len(self) - 1)
            ids = self._order[pos]
            unknown = self._sorted_codes[pos] != codes
        if unknown.any():
            first = int(np.argmax(unknown))
            raise UnknownSymbolError(chr(int(codes[first])), first, len(self), where)
        return ids

    def encode(self, text: str, where: str | None = None) -> np.ndarray:
        """Encode ``text`` into a ``(len(text),)`` int64 array of ids.

        Args:
            text: the text to encode.
            where: optional name of the text, prefixed to the error message.

        Raises:
            UnknownSymbolError: naming the first unknown character and its 0-based position.
        """
        if not isinstance(text, str):
            raise TypeError(f"Vocab.encode expects a str, got {type(text).__name__}")
        return self.encode_code_points(code_points(text), where)

    def decode(self, ids: Any) -> str:
        """Turn a sequence of ids (list, numpy array or CPU tensor, any shape) into text.

        Raises:
            DataError: if an id is outside ``[0, len(self))``.
        """
        arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        bad = (arr < 0) | (arr >= len(self))
        if bad.any():
            raise DataError(
                f"id {int(arr[np.argmax(bad)])} is outside the vocabulary of {len(self)} symbols"
            )
        return "".join(self._symbols[i] for i in arr.tolist())

"""The one exception type of the data layer.

Every problem a user can cause with their data (a missing or empty file, a binary file, a
corpus too short for one batch, an unknown corpus name, a checksum mismatch) raises
:class:`DataError` with a single-line, full-sentence message, so that the command line can
print ``str(error)`` and exit with status 2.
"""

from __future__ import annotations


class DataError(ValueError):
    """A user-facing problem with data: its message is one line that says what to fix."""


class UnknownSymbolError(DataError):
    """A character that is not in the vocabulary was met while encoding text.

    Args:
        symbol: the first unknown character.
        position: its 0-based position in the text being encoded.
        vocab_size: the number of symbols in the vocabulary.
        where: optional prefix naming the text, e.g. ``"the valid split of ptb"``.

    Attributes:
        symbol, position, vocab_size, where: as given.
    """

    def __init__(self, symbol: str, position: int, vocab_size: int, where: str | None = None):
        self.symbol = symbol
        self.position = position
        self.vocab_size = vocab_size
        self.where = where
        message = (
            f"character {symbol!r} at position {position} is not in the vocabulary "
            f"({vocab_size} symbols)"
        )
        if where is not None:
            message = f"{where}: {message}"
        super().__init__(message)

    def __reduce__(self) -> tuple[type, tuple[str, int, int, str | None]]:
        # Exceptions pickle their args; ours takes four, so say how to rebuild it.
        return (type(self), (self.symbol, self.position, self.vocab_size, self.where))


class CorpusNotFoundError(DataError):
    """A named corpus whose files are not where it was looked for.

    The message says which corpus and folder, and how :func:`hmrnn.data.load_corpus` gets
    it (its ``data_dir``, or ``download=True``); a command line says it its own way, from
    :attr:`missing` and the attributes.

    Args:
        name: the corpus name.
        files: the files it is made of.
        looked: where they were looked for: a folder, or two joined by ``" and "``.
        downloadable: whether :func:`hmrnn.data.download_corpus` can fetch it.

    Attributes:
        name, files, looked, downloadable: as given.
        missing: the message's first part, what is missing where (no advice).
    """

    def __init__(self, name: str, files: tuple[str, ...], looked: str, downloadable: bool):
        self.name = name
        self.files = files
        self.looked = looked
        self.downloadable = downloadable
        self.missing = f"corpus {name!r} ({', '.join(files)}) was not found in {looked}"
        fix = "pass the folder that holds it as data_dir"
        if downloadable:
            fix += ", or download=True to download it"
        super().__init__(f"{self.missing}; {fix}")

    def __reduce__(self) -> tuple[type, tuple[str, tuple[str, ...], str, bool]]:
        return (type(self), (self.name, self.files, self.looked, self.downloadable))

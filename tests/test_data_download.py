"""Tests of hmrnn.data.download, with the network replaced by archives served from memory."""

import hashlib
import io
import re
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile

import pytest
from helpers import Terminal

import hmrnn.data.download as dl
from hmrnn.data import DataError, download_corpus, load_corpus, verify_corpus

PTB_FILES = {
    "ptb.char.train.txt": b" a _ c a t \n b _ d o g \n ",
    "ptb.char.valid.txt": b" a _ d o g \n ",
    "ptb.char.test.txt": b" c a t \n ",
}


def _expect(files, member_prefix=""):
    return {
        name: dl.ExpectedFile(member_prefix + name, len(data), hashlib.sha256(data).hexdigest())
        for name, data in files.items()
    }


def _tgz(files, prefix):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _zip(files):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


class _Response(io.BytesIO):
    def __init__(self, payload):
        super().__init__(payload)
        self.headers = {"Content-Length": str(len(payload))}


@pytest.fixture
def serve(monkeypatch):
    """Replace urlopen by a server of in-memory payloads; returns (payloads, requested)."""
    payloads, requested = {}, []

    def fake_urlopen(url, timeout):
        assert timeout > 0
        requested.append(url)
        if url not in payloads:
            raise urllib.error.URLError("no route to host")
        return _Response(payloads[url])

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    return payloads, requested


@pytest.fixture
def fake_ptb(monkeypatch):
    source = dl.Source("http://example.org/simple-examples.tgz", _expect(PTB_FILES, "data/"))
    monkeypatch.setitem(dl.SOURCES, "ptb", source)
    return source


def test_the_real_table():
    assert dl.SOURCES["ptb"].url == "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz"
    assert dl.SOURCES["text8"].url == "http://mattmahoney.net/dc/text8.zip"
    assert dl.SOURCES["enwik8"].url == "http://mattmahoney.net/dc/enwik8.zip"
    assert dl.SOURCES["ptb"].files["ptb.char.valid.txt"].sha256 == (
        "21661f63ec355085879458b6524644d4add5573541b4be14fb52ab2e2e995eb8"
    )
    assert dl.SOURCES["enwik8"].files["enwik8"].size == 100_000_000


def test_verify_good_missing_wrong_size_and_corrupt(tmp_path, fake_ptb):
    for name, data in PTB_FILES.items():
        (tmp_path / name).write_bytes(data)
    assert verify_corpus("ptb", tmp_path) == []
    (tmp_path / "ptb.char.test.txt").write_bytes(b" c a t \n  ")
    corrupt = PTB_FILES["ptb.char.valid.txt"].replace(b"d", b"x")
    (tmp_path / "ptb.char.valid.txt").write_bytes(corrupt)
    (tmp_path / "ptb.char.train.txt").unlink()
    problems = verify_corpus("ptb", tmp_path)
    assert problems == [
        f"ptb.char.train.txt is missing from {tmp_path}",
        f"ptb.char.valid.txt has SHA-256 {hashlib.sha256(corrupt).hexdigest()}, expected "
        f"{fake_ptb.files['ptb.char.valid.txt'].sha256} (checksum mismatch)",
        "ptb.char.test.txt has 10 bytes, expected 9",
    ]
    with pytest.raises(DataError, match="cannot download 'wiki'; downloadable corpora are ptb"):
        verify_corpus("wiki", tmp_path)


def test_download_extract_verify_end_to_end(tmp_path, serve, fake_ptb):
    payloads, requested = serve
    payloads[fake_ptb.url] = _tgz(PTB_FILES, "./simple-examples/data/")
    folder = download_corpus("ptb", tmp_path, progress=False)
    assert folder == tmp_path / "ptb"
    assert sorted(p.name for p in folder.iterdir()) == sorted(PTB_FILES)  # no leftovers
    for name, data in PTB_FILES.items():
        assert (folder / name).read_bytes() == data
    corpus = load_corpus("ptb", cache_dir=tmp_path)
    assert corpus.vocab.decode(corpus.splits["valid"]) == "a_dog\n"
    assert download_corpus("ptb", tmp_path, progress=False) == folder
    assert requested == [fake_ptb.url]  # verified files are not fetched again


def test_download_shows_a_bar_on_a_terminal_only(tmp_path, serve, fake_ptb, monkeypatch, capsys):
    payloads, _ = serve
    payloads[fake_ptb.url] = archive = _tgz(PTB_FILES, "./simple-examples/data/")
    download_corpus("ptb", tmp_path / "piped")  # stderr is not a terminal: no bar
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(sys, "stderr", terminal := Terminal())
    download_corpus("ptb", tmp_path / "terminal")
    assert re.search(rf"ptb: 100%.*{len(archive)}B?/{len(archive)}B? \[", terminal.getvalue())


def test_download_zip(tmp_path, serve, monkeypatch):
    payloads, _ = serve
    files = {"text8": b"the cat sat on the mat " * 50}
    monkeypatch.setitem(
        dl.SOURCES, "text8", dl.Source("http://example.org/text8.zip", _expect(files))
    )
    payloads["http://example.org/text8.zip"] = _zip(files)
    corpus = load_corpus("text8", cache_dir=tmp_path, download=True)
    assert (tmp_path / "text8" / "text8").read_bytes() == files["text8"]
    assert len(corpus.splits["train"]) == round(0.9 * len(files["text8"]))


def test_checksum_mismatch_after_download(tmp_path, serve, fake_ptb):
    payloads, _ = serve
    damaged = {**PTB_FILES, "ptb.char.test.txt": b" c a r \n "}
    payloads[fake_ptb.url] = _tgz(damaged, "simple-examples/data/")
    with pytest.raises(DataError) as info:
        download_corpus("ptb", tmp_path, progress=False)
    message = str(info.value)
    assert message.startswith(
        "the download of ptb from http://example.org/simple-examples.tgz failed verification: "
        "ptb.char.test.txt has SHA-256 "
    )
    assert message.endswith("(checksum mismatch)") and "\n" not in message


def test_network_and_archive_failures(tmp_path, serve, fake_ptb):
    payloads, _ = serve
    with pytest.raises(
        DataError,
        match=r"could not download http://example.org/simple-examples"
        r"\.tgz: <urlopen error no route to host>",
    ):
        download_corpus("ptb", tmp_path, progress=False)
    payloads[fake_ptb.url] = b"this is not an archive"
    with pytest.raises(DataError, match="the archive downloaded from .* is damaged"):
        download_corpus("ptb", tmp_path, progress=False)
    payloads[fake_ptb.url] = _tgz({"README": b"hello"}, "simple-examples/")
    with pytest.raises(DataError, match="has no member data/ptb.char.train.txt"):
        download_corpus("ptb", tmp_path, progress=False)
    assert list((tmp_path / "ptb").iterdir()) == []  # nothing half-written is left behind

"""Text classification sets (SST-2, rt-polarity): a tokeniser, a vocabulary, padding and the loaders.

Token ids are right-padded with 0 (``<pad>``); words not in the training vocabulary map to 1 (``<unk>``).

>>> tokenize("It's a -LRB- small -RRB- film, isn't it?")
['it', "'s", 'a', '(', 'small', ')', 'film', ',', 'is', "n't", 'it', '?']
>>> vocab = Vocab.build([["a", "good", "film"], ["a", "bad", "film"]])
>>> vocab.decode(vocab.encode(["a", "great", "film"]))
['a', '<unk>', 'film']
>>> pad([[2, 3], [4]])
tensor([[2, 3],
        [4, 0]])
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from .._data import Split
from .._errors import ZooError
from . import _folders
from ._registry import Dataset, register_dataset

PAD, UNK = "<pad>", "<unk>"
# Penn-Treebank escapes in SST-2 (brackets, quotes, slashes) mapped to the plain characters.
_ESCAPES = [("-lrb-", " ( "), ("-rrb-", " ) "), ("-lsb-", " [ "), ("-rsb-", " ] "), ("-lcb-", " { "),
            ("-rcb-", " } "), ("``", ' " '), ("''", ' " '), ("\\/", "/"), ("\\*", "*")]
# A word (inner hyphens kept) with clitics split off PTB-style ("is n't", "film 's"), or a run of one punctuation mark.
_TOKEN = re.compile(r"\w+(?=n't\b)|n't\b|'(?:s|re|ve|ll|d|m)\b|\w+(?:-\w+)*|([^\w\s])\1*")
_FILES = {"sst2": ("train.tsv", "dev.tsv", "test.tsv"), "rt-polarity": ("rt-polarity.pos", "rt-polarity.neg")}


def tokenize(text: str) -> list[str]:
    """Lower-case ``text`` and split it into words and punctuation.

    Works on raw text and on text already tokenised Penn-Treebank style: ``-lrb-`` / ``-rrb-`` become ``(`` / ``)``,
    ``` `` ``` and ``''`` become ``"``, and contractions are split the PTB way (``isn't`` -> ``is n't``).

    Parameters
    ----------
    text : str
        One sentence or snippet.

    Returns
    -------
    list of str
        The tokens; empty for blank text.
    """
    text = text.lower()
    for escape, plain in _ESCAPES:
        text = text.replace(escape, plain)
    return [m.group(0) for m in _TOKEN.finditer(text)]


class Vocab:
    """A token <-> id mapping with ``<pad>`` = 0 and ``<unk>`` = 1, then tokens by frequency.

    Parameters
    ----------
    tokens : sequence of str
        Every token in id order, starting with ``<pad>`` and ``<unk>``.
    """

    def __init__(self, tokens: Sequence[str]):
        tokens = list(tokens)
        if tokens[:2] != [PAD, UNK] or len(set(tokens)) != len(tokens):
            raise ZooError(f"a Vocab's tokens must start with {PAD!r}, {UNK!r} and have no duplicates; "
                           f"got {tokens[:5]}...")
        self.itos = tokens
        self.stoi = {t: i for i, t in enumerate(tokens)}

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], min_freq: int = 1, max_size: int | None = None) -> Vocab:
        """The vocabulary of ``token_lists`` (build it from the training split only).

        Parameters
        ----------
        token_lists : iterable of sequences of str
            Tokenised texts.
        min_freq : int
            Keep tokens seen at least this often.
        max_size : int, optional
            Cap on ``len(vocab)``, the two special tokens included; the most frequent tokens are kept.

        Returns
        -------
        Vocab
            Tokens sorted by decreasing frequency, ties broken alphabetically, so the same texts give the same ids.
        """
        _check_int("min_freq", min_freq, 1)
        if max_size is not None:
            _check_int("max_size", max_size, 2)
        counts = Counter(t for tokens in token_lists for t in tokens)
        counts.pop(PAD, None), counts.pop(UNK, None)
        kept = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
        if max_size is not None:
            kept = kept[:max_size - 2]
        return cls([PAD, UNK, *kept])

    def encode(self, tokens: Iterable[str]) -> list[int]:
        """The ids of ``tokens``; words not in the vocabulary become 1 (``<unk>``)."""
        return [self.stoi.get(t, 1) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """The tokens of ``ids`` (a list or a tensor row), padding (0) left out."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        return [self.itos[i] for i in ids if i != 0]

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos

    def __repr__(self) -> str:
        return f"Vocab({len(self)} tokens: {self.itos[2:7]}...)"

    def to_dict(self) -> dict:
        """A JSON-serialisable form; :meth:`from_dict` rebuilds the same vocabulary."""
        return {"tokens": list(self.itos)}

    @classmethod
    def from_dict(cls, state: dict) -> Vocab:
        """The vocabulary saved by :meth:`to_dict`."""
        if not isinstance(state, dict) or "tokens" not in state:
            raise ZooError("Vocab.from_dict needs the dict made by Vocab.to_dict() (with a 'tokens' list)")
        return cls(state["tokens"])


def pad(sequences: Sequence[Sequence[int]], max_len: int | None = None) -> torch.Tensor:
    """Token-id sequences as one ``(n, L)`` LongTensor, right-padded with 0.

    Parameters
    ----------
    sequences : sequence of sequences of int
        One list of token ids per row; none may be empty.
    max_len : int, optional
        Longer sequences are cut to this many tokens. ``L`` is the longest sequence, capped at ``max_len``.

    Returns
    -------
    torch.LongTensor
        Shape ``(n, L)``.
    """
    if max_len is not None:
        _check_int("max_len", max_len, 1)
    for i, s in enumerate(sequences):
        if len(s) == 0:
            raise ZooError(f"row {i} is an empty sequence (no tokens); drop empty texts before padding")
    longest = max((len(s) for s in sequences), default=0)
    width = longest if max_len is None else min(longest, max_len)
    out = np.zeros((len(sequences), width), dtype=np.int64)
    for i, s in enumerate(sequences):
        s = s[:width]
        out[i, :len(s)] = s
    return torch.from_numpy(out)


def lengths(x: torch.Tensor) -> torch.Tensor:
    """The number of non-pad tokens in each row of a padded ``(n, L)`` batch, as a LongTensor ``(n,)``."""
    return (x != 0).sum(-1)


def find_folder(name: str, path=None) -> Path:
    """The first of ``path``, ``path/<name>``, ``$ZOO_DATA/<name>``, the user cache holding ``name``'s files."""
    needed = _FILES[name][:2]
    return _folders.find_folder(
        _folders.candidate_folders(name, path), lambda place: all((place / f).is_file() for f in needed),
        f"dataset {name!r} not found (looked for {' and '.join(needed)})",
        f"Point at it with zoo.datasets.load({name!r}, path=FOLDER) or set ZOO_DATA to a folder holding {name}/")


@register_dataset("sst2")
def load_sst2(path=None, max_train: int | None = None, seed: int = 0, min_freq: int = 1,
              max_vocab: int | None = 20000, max_len: int | None = 64, test_split: str = "dev") -> Dataset:
    """SST-2 binary sentiment (Socher et al. 2013, GLUE version): 0 = negative, 1 = positive.

    Parameters
    ----------
    path : str or Path, optional
        The folder with ``train.tsv``, ``dev.tsv``, ``test.tsv`` (or its parent); else ``$ZOO_DATA/sst2``, then
        ``~/.cache/zoo/sst2``.
    max_train : int, optional
        Train on a random subset of this many rows, drawn with ``seed``.
    seed : int
        Seed for the ``max_train`` subset.
    min_freq, max_vocab : int
        Passed to :meth:`Vocab.build` (``max_vocab`` caps ``len(vocab)``), built from the training rows used.
    max_len : int, optional
        Longer texts are cut to this many tokens.
    test_split : {"dev", "test"}
        ``dev.tsv`` (872 sentences) or the labelled ``test.tsv`` (1821 sentences).

    Returns
    -------
    Dataset
        ``x`` padded token ids ``(n, L)``, ``y`` int64 labels, ``vocab`` the :class:`Vocab`.
    """
    if test_split not in ("dev", "test"):
        raise ZooError(f"test_split must be 'dev' or 'test', got {test_split!r}")
    _check_options(max_train, seed, max_len)
    folder = find_folder("sst2", path)
    train = _read_tsv(folder / "train.tsv")
    test = _read_tsv(folder / f"{test_split}.tsv")
    if max_train is not None:
        idx = np.random.default_rng(seed).permutation(len(train))[:max_train]
        train = [train[i] for i in sorted(idx)]
    return _make_dataset("sst2", train, test, min_freq, max_vocab, max_len)


@register_dataset("rt-polarity")
def load_rt_polarity(path=None, test_fraction: float = 0.1, seed: int = 0, max_train: int | None = None,
                     min_freq: int = 1, max_vocab: int | None = 20000, max_len: int | None = 64) -> Dataset:
    """Movie-review sentence polarity (Pang & Lee 2005), 5331 positive (1) and 5331 negative (0) snippets.

    There is no official split: the snippets are shuffled with ``numpy.random.default_rng(seed)`` and the first
    ``round(test_fraction * n)`` form the test split, so the same ``seed`` (and data) always gives the same split.

    Parameters
    ----------
    path : str or Path, optional
        The folder with ``rt-polarity.pos`` and ``rt-polarity.neg`` (or its parent); else ``$ZOO_DATA/rt-polarity``,
        then ``~/.cache/zoo/rt-polarity``.
    test_fraction : float
        Share of the snippets held out for testing, in (0, 1).
    seed : int
        Seed of the shuffle that makes the split.
    max_train : int, optional
        Keep only the first this many (shuffled) training rows.
    min_freq, max_vocab : int
        Passed to :meth:`Vocab.build` (``max_vocab`` caps ``len(vocab)``), built from the training rows used.
    max_len : int, optional
        Longer texts are cut to this many tokens.

    Returns
    -------
    Dataset
        ``x`` padded token ids ``(n, L)``, ``y`` int64 labels, ``vocab`` the :class:`Vocab`.
    """
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise ZooError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")
    _check_options(max_train, seed, max_len)
    folder = find_folder("rt-polarity", path)
    rows = _read_lines(folder / "rt-polarity.neg", 0) + _read_lines(folder / "rt-polarity.pos", 1)
    order = np.random.default_rng(seed).permutation(len(rows))
    n_test = min(max(round(test_fraction * len(rows)), 1), len(rows) - 1)
    test = [rows[i] for i in order[:n_test]]
    train = [rows[i] for i in order[n_test:]][:max_train]
    return _make_dataset("rt-polarity", train, test, min_freq, max_vocab, max_len)


def _make_dataset(name: str, train: list, test: list, min_freq: int, max_vocab: int | None,
                  max_len: int | None) -> Dataset:
    """Build the vocabulary on ``train`` ((tokens, label) rows) and encode and pad both splits."""
    if not train or not test:
        raise ZooError(f"dataset {name!r}: the {'training' if not train else 'test'} split has no rows")
    vocab = Vocab.build((tokens for tokens, _ in train), min_freq=min_freq, max_size=max_vocab)

    def make(rows):
        x = pad([vocab.encode(tokens) for tokens, _ in rows], max_len)
        return Split(x, torch.tensor([label for _, label in rows], dtype=torch.int64))

    return Dataset(name, make(train), make(test), task="classification", vocab=vocab)


def _read_tsv(file: Path) -> list[tuple[list[str], int]]:
    """(tokens, label) rows of a ``label<TAB>text`` file with a header line; empty texts dropped with a warning."""
    if not file.is_file():
        raise ZooError(f"{file} is missing; an SST-2 folder needs train.tsv, dev.tsv and test.tsv")
    rows, empty = [], 0
    lines = file.read_text(encoding="utf-8").splitlines()[1:]
    for number, line in enumerate(lines, start=2):
        if not line.strip():
            continue
        label, _, text = line.partition("\t")
        if label.strip() not in ("0", "1"):
            raise ZooError(f"{file}, line {number}: expected 'label<TAB>text' with label 0 or 1, got {line[:60]!r}")
        tokens = tokenize(text)
        if tokens:
            rows.append((tokens, int(label)))
        else:
            empty += 1
    _warn_empty(file, empty)
    return rows


def _read_lines(file: Path, label: int) -> list[tuple[list[str], int]]:
    """(tokens, label) rows, one per line of ``file``; empty lines dropped with a warning."""
    token_lists = [tokenize(line) for line in file.read_text(encoding="utf-8").splitlines()]
    _warn_empty(file, sum(not t for t in token_lists))
    return [(tokens, label) for tokens in token_lists if tokens]


def _warn_empty(file: Path, count: int) -> None:
    if count:
        warnings.warn(f"{file}: dropped {count} empty row(s) with no tokens", UserWarning, stacklevel=3)


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ZooError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_options(max_train, seed, max_len) -> None:
    if max_train is not None:
        _check_int("max_train", max_train, 1)
    if max_len is not None:
        _check_int("max_len", max_len, 1)
    _check_int("seed", seed, 0)

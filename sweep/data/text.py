"""Language-modelling datasets: Penn Treebank words (`ptb`) and characters of any text file (`char`)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch

from sweep.core.errors import ConfigError
from sweep.data.base import LN2, StreamSplit, TokenDataset, read_data_file

EOS, UNK = "<eos>", "<unk>"
PTB_FILES = {"train": "ptb.train.txt", "valid": "ptb.valid.txt", "test": "ptb.test.txt"}


class WordDataset(TokenDataset):
    """Word-level language model; metric `perplexity` = exp(mean NLL per token, <eos> included)."""

    default_bptt = 35


class CharDataset(TokenDataset):
    """Character-level language model; metric `bpc` = mean NLL per character / ln 2 (bits per character)."""

    default_bptt = 100

    def summarize(self, mean_loss: float) -> dict[str, float]:
        return {"bpc": mean_loss / LN2, **super().summarize(mean_loss)}


def _read_text(file: Path, name: str) -> str:
    raw = read_data_file(file, name)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{name}: {file}: not UTF-8 text (byte {exc.start})") from None


def _words(text: str) -> list[str]:
    return [word for line in text.splitlines() for word in (*line.split(), EOS)]


def load_ptb(path: str | Path | None = None) -> WordDataset:
    """Penn Treebank from a directory holding ptb.train.txt, ptb.valid.txt and ptb.test.txt.

    One sentence per line; every line ends with <eos>. The vocabulary is the training set's words
    (plus <unk>); other words in valid/test become <unk>.
    """
    if path is None:
        raise ConfigError("ptb: option path (a directory holding ptb.train/valid/test.txt) is required")
    directory = Path(path)
    if not directory.is_dir():
        raise ConfigError(
            f"ptb: {directory} is not a directory" if directory.exists() else f"ptb: {directory} not found"
        )
    words = {split: _words(_read_text(directory / file, "ptb")) for split, file in PTB_FILES.items()}
    for split, tokens in words.items():
        if len(tokens) < 2:
            raise ConfigError(f"ptb: {directory / PTB_FILES[split]}: holds no text")
    counts = Counter(words["train"])
    counts.setdefault(UNK, 0)
    # Most frequent first, ties alphabetical: the same files always give the same ids.
    vocab = sorted(counts, key=lambda w: (-counts[w], w))
    index = {word: i for i, word in enumerate(vocab)}
    unk = index[UNK]
    splits = [
        StreamSplit(torch.tensor([index.get(w, unk) for w in words[split]], dtype=torch.int64))
        for split in PTB_FILES
    ]
    train, valid, test = splits
    dataset = WordDataset(train, valid, test, vocab=vocab)
    dataset.name = "ptb"
    return dataset


def load_char(
    path: str | Path | None = None,
    split: tuple[float, float, float] = (0.9, 0.05, 0.05),
    max_chars: int | None = None,
) -> CharDataset:
    """Characters of the text file `path`, cut by position into train/valid/test by the `split` fractions.

    The vocabulary is every character of the file (after `max_chars`, which keeps only the beginning).
    """
    if path is None:
        raise ConfigError("char: option path (a UTF-8 text file) is required")
    file = Path(path)
    text = _read_text(file, "char")
    if max_chars is not None:
        if type(max_chars) is not int or max_chars < 6:
            raise ConfigError(f"char: max_chars must be at least 6, got {max_chars}")
        text = text[:max_chars]
    try:
        fractions = tuple(float(f) for f in split)
    except (TypeError, ValueError):
        fractions = ()
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError(f"char: split must be three positive fractions summing to 1, got {split}")
    n = len(text)
    cut1 = round(n * fractions[0])
    cut2 = cut1 + round(n * fractions[1])
    if min(cut1, cut2 - cut1, n - cut2) < 2:
        raise ConfigError(f"char: {file}: too short ({n} characters) to split {split}")
    # Map characters to ids in bulk: UTF-32 code points, then the sorted unique ones as the vocabulary.
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    points, ids = np.unique(codes, return_inverse=True)
    tokens = torch.from_numpy(ids.astype(np.int64))
    vocab = [chr(int(p)) for p in points]
    dataset = CharDataset(
        StreamSplit(tokens[:cut1]), StreamSplit(tokens[cut1:cut2]), StreamSplit(tokens[cut2:]), vocab=vocab
    )
    dataset.name = "char"
    return dataset

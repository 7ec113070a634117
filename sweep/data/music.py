"""JSB Chorales (Boulanger-Lewandowski et al. 2012): next-frame prediction on 88-pitch piano rolls."""

from __future__ import annotations

import gzip
import json
import math
import zlib
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from sweep.core.errors import ConfigError
from sweep.data.base import BernoulliDataset, SequenceSplit, read_data_file

LOWEST_PITCH, HIGHEST_PITCH = 21, 108  # the piano's range, A0..C8
N_PITCHES = HIGHEST_PITCH - LOWEST_PITCH + 1
PACKAGED = "jsb_chorales.json.gz"
SPLITS = ("train", "valid", "test")


class MusicDataset(BernoulliDataset):
    """Piano rolls: input frame t, target frame t + 1; metric `nll` = Bernoulli NLL summed over the
    88 pitches and averaged over predicted frames (Greff et al.'s metric)."""

    input_size = output_size = N_PITCHES
    eval_batch_size = 128
    # Predicting 1/2 everywhere costs 88 ln 2 = 61 nats a frame; 20x that is no longer learning.
    loss_ceiling = 20.0 * N_PITCHES * math.log(2.0)

    def __init__(self, name: str, train: SequenceSplit, valid: SequenceSplit, test: SequenceSplit):
        super().__init__(train, valid, test)
        self.name = name


def piano_roll(frames: list[list[int]]) -> torch.Tensor:
    """(T, 88) float 0/1 piano roll of a chorale given as lists of sounding MIDI pitches."""
    roll = torch.zeros(len(frames), N_PITCHES)
    for t, pitches in enumerate(frames):
        for pitch in pitches:
            roll[t, pitch - LOWEST_PITCH] = 1.0
    return roll


def from_chorales(splits: dict[str, list[list[list[int]]]], name: str = "jsb") -> MusicDataset:
    """A dataset from already validated chorales per split (lists of frames of MIDI pitches)."""
    parts = []
    for split in SPLITS:
        rolls = [piano_roll(chorale) for chorale in splits[split]]
        parts.append(SequenceSplit([(roll[:-1], roll[1:]) for roll in rolls]))
    return MusicDataset(name, *parts)


def load_jsb(path: str | Path | None = None) -> MusicDataset:
    """JSB Chorales, from the packaged copy or from `path` (same JSON layout, optionally gzip-compressed).

    The layout is `{"splits": {"train": [...], "valid": [...], "test": [...]}}` (or the three splits at the
    top level); a chorale is a list of frames, a frame a list of sounding MIDI pitches in 21..108.
    """
    if path is None:
        label = f"{PACKAGED} (package data)"
        raw = resources.files("sweep").joinpath("data", PACKAGED).read_bytes()
    else:
        label = str(path)
        raw = read_data_file(Path(path), "jsb")
    return from_chorales(_parse(raw, label))


def _parse(raw: bytes, label: str) -> dict[str, list[list[list[int]]]]:
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise ConfigError(f"jsb: {label}: not a valid gzip file ({exc})") from None
    try:
        data: Any = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"jsb: {label}: not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"jsb: {label}: not valid JSON at line {exc.lineno} ({exc.msg})") from None
    if isinstance(data, dict) and isinstance(data.get("splits"), dict):
        data = data["splits"]
    if not isinstance(data, dict) or not all(split in data for split in SPLITS):
        raise ConfigError(f"jsb: {label}: expected an object with splits 'train', 'valid' and 'test'")
    for split in SPLITS:
        _check_split(data[split], f"jsb: {label}: {split}")
    return {split: data[split] for split in SPLITS}


def _check_split(chorales: Any, where: str) -> None:
    if not isinstance(chorales, list) or not chorales:
        raise ConfigError(f"{where}: expected a non-empty list of chorales")
    for c, chorale in enumerate(chorales):
        if not isinstance(chorale, list) or len(chorale) < 2:
            raise ConfigError(f"{where} chorale {c}: expected a list of at least 2 frames")
        for t, frame in enumerate(chorale):
            if not isinstance(frame, list):
                raise ConfigError(f"{where} chorale {c} frame {t}: expected a list of MIDI pitches")
            for pitch in frame:
                # bool is an int subclass; true/false in a frame is a malformed file, not pitch 1/0
                if type(pitch) is not int or not LOWEST_PITCH <= pitch <= HIGHEST_PITCH:
                    raise ConfigError(
                        f"{where} chorale {c} frame {t}: pitch {pitch!r} is not an integer in "
                        f"{LOWEST_PITCH}..{HIGHEST_PITCH}"
                    )


def frequency_baseline(dataset: MusicDataset, split: str = "test") -> float:
    """NLL per frame on `split` of predicting each pitch with its training-set frequency (a trivial model)."""
    targets = torch.cat([y for _, y in _sequences(dataset, "train")])
    # Clamp so a pitch never heard in training costs a large but finite amount when it does sound.
    freq = targets.mean(0).clamp(1e-6, 1 - 1e-6)
    frames = torch.cat([y for _, y in _sequences(dataset, split)])
    nll = -(frames * freq.log() + (1 - frames) * (1 - freq).log()).sum(1)
    return float(nll.mean())


def _sequences(dataset: MusicDataset, split: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    part = dataset.split(split)
    assert isinstance(part, SequenceSplit)  # a music dataset's splits are always sequences
    return part.sequences

"""Wording shared by every message the packages print."""

import difflib
from collections.abc import Iterable


def plural(count: int, noun: str) -> str:
    """`1 trial`, `2 trials`, `0 trials`."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """` (did you mean learning_rate?)` for the closest of `known` to a mistyped `name`, else ``."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""

"""Wording shared by every message the packages print."""


def plural(count: int, noun: str) -> str:
    """`1 trial`, `2 trials`, `0 trials`."""
    return f"{count} {noun}{'' if count == 1 else 's'}"

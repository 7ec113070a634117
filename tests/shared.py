"""The project's shared material (data sets, the fANOVA reference): `../shared` beside the checkout.

CI lays a copy of shared/ beside its clone; a developer's checkout has it in the same place. A missing
file fails the test that needs it (never a skip: CI must run it).
"""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"


def shared_path(*parts: str) -> Path:
    """``../shared/<parts>`` relative to the checkout; fails the calling test when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"{path} is missing: the tests expect the project's shared/ folder beside the checkout",
                    pytrace=False)
    return path

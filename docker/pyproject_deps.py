"""Print the requirement lines of pyproject.toml, so the image installs dependencies before the source.

Used by docker/Dockerfile:  python pyproject_deps.py pyproject.toml --extra dashboard --exclude torch
torch is excluded because the Dockerfile installs it first from the PyTorch index of the chosen build
(CPU or CUDA); letting pip resolve it again from PyPI could swap in a different build.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def requirement_name(requirement: str) -> str:
    """The normalised distribution name of a PEP 508 requirement ("psycopg[binary]>=3" -> "psycopg")."""
    match = _NAME.match(requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def requirements(pyproject: Path, extras: list[str], exclude: list[str]) -> list[str]:
    """Runtime dependencies plus the named optional-dependency groups, minus the excluded distributions."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    lines = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise SystemExit(f"error: {pyproject} has no optional-dependencies group {extra!r}")
        lines.extend(optional[extra])
    skip = {requirement_name(name) for name in exclude}
    return [line for line in lines if requirement_name(line) not in skip]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("--extra", action="append", default=[], help="optional-dependencies group to add")
    parser.add_argument("--exclude", action="append", default=[], help="distribution to leave out")
    args = parser.parse_args(argv)
    sys.stdout.write("".join(f"{line}\n" for line in requirements(args.pyproject, args.extra, args.exclude)))


if __name__ == "__main__":
    main()

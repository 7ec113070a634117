"""The packages keep their borders: analysis and storage never import torch, and of sweep only its torch-free
core (`sweep.core`); the core imports no other odyssey package, nor torch, Optuna, SQLAlchemy or pandas."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

CHECK = """
import sys
import importlib, pkgutil
pkg = importlib.import_module({pkg!r})
for info in pkgutil.walk_packages(pkg.__path__, prefix={pkg!r} + "."):
    importlib.import_module(info.name)
allowed = {allowed!r}
bad = sorted(m for m in sys.modules
             if m.split(".")[0] in {forbidden!r} and m not in allowed and not m.startswith({pkg!r}))
print(",".join(bad))
"""

# sweep.core may be imported by every package; nothing else of sweep by analysis or storage
CORE = ["sweep", "sweep.core", "sweep.core.errors", "sweep.core.settings", "sweep.core.space",
        "sweep.core.states", "sweep.core.text", "sweep.core.variants"]


@pytest.mark.parametrize(
    ("pkg", "forbidden", "allowed"),
    [
        ("storage", {"torch", "sweep", "analysis"}, CORE),
        ("analysis", {"torch", "sweep"}, CORE),
        # numpy (and pydantic) allowed: the search-space Param maps whole columns of real and sampled values
        ("sweep.core", {"torch", "optuna", "sqlalchemy", "pandas", "sweep", "storage", "analysis"},
         ["sweep"]),
        ("sweep.data", {"optuna", "sqlalchemy", "storage", "analysis", "sweep"}, CORE),
        ("sweep.nn", {"optuna", "sqlalchemy", "storage", "analysis", "sweep"}, CORE),
    ],
)
def test_package_does_not_import_forbidden(pkg: str, forbidden: set[str], allowed: list[str]) -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHECK.format(pkg=pkg, forbidden=sorted(forbidden), allowed=sorted(allowed))],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "", f"{pkg} imports {out.stdout.strip()}"


def test_only_the_command_line_imports_the_command_line() -> None:
    """The library (studies, workers, the local run, training) is callable from Python without the CLI:
    no module outside sweep/cli imports sweep.cli, not even lazily inside a function."""
    root = Path(__file__).resolve().parents[1]
    bad = []
    for path in sorted((root / "sweep").rglob("*.py")):
        if "cli" in path.relative_to(root / "sweep").parts[:1]:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            bad += [f"{path.relative_to(root)}: {n}" for n in names if n.split(".")[:2] == ["sweep", "cli"]]
    assert bad == []


def test_light_cli_commands_do_not_import_torch() -> None:
    """`odyssey query` and `odyssey study list` must start fast: no torch at import time."""
    code = (
        "import sys, importlib\n"
        "for m in ('sweep.cli.main', 'sweep.cli.query', 'sweep.cli.report'):\n"
        "    importlib.import_module(m)\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


LOGGERS = """
import importlib, logging, pkgutil
packages = ("sweep", "analysis", "storage")
bad = []
for pkg in packages:
    for info in pkgutil.walk_packages(importlib.import_module(pkg).__path__, prefix=pkg + "."):
        module = importlib.import_module(info.name)
        bad += [f"{info.name}.{k}: {v.name}" for k, v in vars(module).items()
                if isinstance(v, logging.Logger) and v.name != "odyssey." + info.name]
bad += [name for name in logging.root.manager.loggerDict if name.split(".")[0] in packages]
print("\\n".join(bad))
"""


def test_every_module_logs_under_odyssey() -> None:
    """`logging.getLogger("odyssey")` selects every log line of the three packages: each module's logger is
    `odyssey.<module>` (so `odyssey.storage` selects the storage package's)."""
    out = subprocess.run([sys.executable, "-c", LOGGERS], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"loggers outside odyssey.<module>:\n{out.stdout}"

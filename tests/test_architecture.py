"""The layer rules of the code (.importlinter, checked by import-linter): they hold, and each one breaks
when a violating import is added (on a copy of the packages)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "services", "partial_sup", "db", "mnc_core")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` on the packages under ``root`` (its .importlinter), in a fresh interpreter."""
    return subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                           "sys.exit(lint_imports_command())", "--no-cache"],
                          cwd=root, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root), "COLUMNS": "400"}, capture_output=True,
                          text=True, timeout=300)


def test_the_layer_contracts_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "8 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("module, source, contract", [
    ("app/_probe.py", "from db import queries\n", "app calls the services facade"),
    ("app/_probe.py", "from services import training\n", "app calls the services facade"),
    ("partial_sup/_probe.py", "from db import masks\n", "partial_sup is the method only"),
    ("db/_probe.py", "import torch\n", "db holds all SQL"),
    ("db/_probe.py", "from partial_sup import grabcut\n", "Layers"),
    ("mnc_core/_probe.py", "from services import presets\n", "mnc_core imports nothing of the project"),
    ("services/_probe.py", "from sqlalchemy import select\n", "No module outside db imports sqlalchemy"),
    ("services/wire.py", "from services import workbench\n", "services.wire checks plain values"),
    ("services/editing.py", "from services import workbench\n", "services.editing holds the edits"),
])
def test_a_violating_import_breaks_its_contract(tmp_path, module, source, contract):
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    assert lint_imports(tmp_path).returncode == 0  # the copy is as clean as the original
    (tmp_path / module).write_text(source)
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    broken = [line for line in result.stdout.splitlines() if line.rstrip().endswith(" BROKEN")]
    assert any(line.startswith(contract) for line in broken), result.stdout  # (the layers may break too)

"""Clients import nothing of the daemon: bgctl and bgls share only bgcore with it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = ROOT / "clients"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_no_client_module_names_a_daemon_module():
    offenders = []
    for path in sorted(CLIENTS.rglob("*.py")):
        for name in imported_modules(path):
            if name == "bgd" or name.startswith("bgd."):
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offenders == []


def test_bgcore_imports_nothing_of_the_daemon_or_the_clients():
    offenders = []
    for path in sorted((ROOT / "core" / "bgcore").rglob("*.py")):
        for name in imported_modules(path):
            if name.split(".")[0] in ("bgd", "bgctl", "bgls"):
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offenders == []


def test_loading_every_client_module_loads_no_daemon_module():
    modules = sorted({".".join(p.relative_to(CLIENTS).with_suffix("").parts).removesuffix(".__init__")
                      for p in CLIENTS.rglob("*.py") if p.name != "__main__.py"})
    code = ("import importlib, sys\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m == 'bgd' or m.startswith('bgd.')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"

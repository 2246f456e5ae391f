"""The shell's modules stay small (STYLE.md: under about 400 lines)."""

from __future__ import annotations

from pathlib import Path

SHELL = Path(__file__).resolve().parents[3] / "python-services" / "src" / "vmclient" / "shell"


def test_every_shell_module_is_under_400_lines():
    sizes = {p.name: len(p.read_text().splitlines()) for p in SHELL.glob("*.py")}
    assert "window.py" in sizes
    assert {n: s for n, s in sizes.items() if s >= 400} == {}

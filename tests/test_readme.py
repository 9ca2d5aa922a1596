"""The README's library example runs as written."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import ROOT

EXPECTED = ["5760 rows; 0 bad lines", "1149 5760 True"]


def test_readme_library_examples_run() -> None:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"<!-- readme-example.*?-->\s*```python\n(.*?)```", text, re.S)
    assert len(blocks) == len(EXPECTED), "README's library examples changed"
    for code, expected in zip(blocks, EXPECTED):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           cwd=ROOT, timeout=300)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == expected


def test_readme_names_every_flag() -> None:
    """Every long option of every subcommand appears in README.md (its user's guide)."""
    import argparse

    from recs_core.cli import build_parser

    text = (ROOT / "README.md").read_text()
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"{name} {o}" for name, p in sub.choices.items() for a in p._actions
               for o in a.option_strings if o.startswith("--") and o != "--help" and o not in text]
    assert not missing, f"flags not in README.md: {missing}"
    assert len(text.encode()) <= 12_500, "README.md is a user's guide: details go to docs/"

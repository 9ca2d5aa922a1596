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

"""The README's library example runs as written."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import ROOT


def test_readme_library_example_runs() -> None:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- readme-example.*?-->\s*```python\n(.*?)```", text, re.S)
    assert m, "README lost its library example"
    r = subprocess.run([sys.executable, "-c", m.group(1)], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "5760 rows; 0 bad lines"

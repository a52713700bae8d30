"""``make stress``: coverage-guided fuzzing (atheris) of every seed for a fixed time.

Each seed is fuzzed in its own process (``tests/robustness/fuzz.py``) for
``VDGUI_FUZZ_SECONDS`` (default 60).  A crash, leak, hang or write fails the test
and leaves the input in the corpus folder.  The figures (inputs per format, time)
are written to ``build/fuzz-summary.json`` for the README's reliability section.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .seeds import all_seeds

pytestmark = pytest.mark.stress

SECONDS = int(os.environ.get("VDGUI_FUZZ_SECONDS", "60"))
ROOT = Path(__file__).resolve().parents[2]
SUMMARY = ROOT / "build" / "fuzz-summary.json"


@pytest.mark.parametrize("name", sorted(all_seeds()))
def test_coverage_guided_fuzzing(name, tmp_path):
    pytest.importorskip("atheris", reason="make stress installs atheris")
    corpus = tmp_path / "corpus"
    result = subprocess.run([sys.executable, "-m", "tests.robustness.fuzz", name,
                             str(SECONDS), str(corpus)], cwd=ROOT, capture_output=True,
                            text=True, timeout=SECONDS * 3 + 120)
    assert result.returncode == 0, result.stderr[-4000:]
    done = re.search(r"Done (\d+) runs in (\d+) second", result.stderr)
    assert done, result.stderr[-2000:]
    SUMMARY.parent.mkdir(exist_ok=True)
    summary = json.loads(SUMMARY.read_text()) if SUMMARY.exists() else {}
    summary[name] = {"inputs": int(done.group(1)), "seconds": int(done.group(2))}
    SUMMARY.write_text(json.dumps(summary, indent=1, sort_keys=True))

"""``make stress``: coverage-guided fuzzing (atheris) of every seed for a fixed time.

Each seed is fuzzed (``tests/robustness/fuzz.py``) for ``VDGUI_FUZZ_SECONDS``
(default 60), in a series of processes that share one corpus: atheris 3.0's
instrumentation leaks about one input's size per input run (the same code run
without it does not grow), so each process stops after :func:`runs_per_process`
inputs, before that leak could trip libFuzzer's memory limit.  A crash, leak, hang
or write fails the test and leaves the input in the corpus folder.  The figures
(inputs per format, time) are written to ``build/fuzz-summary.json`` for the
README's reliability section.
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


#: Memory one fuzzing process may lose to the instrumentation's leak (libFuzzer's
#: limit is 4 GiB; the process starts at about 200 MiB).
LEAK_BUDGET = 5 << 29


def runs_per_process(seed_size: int) -> int:
    """Inputs per process, counting one and a half seeds lost per input (measured:
    about one; mutated inputs are up to twice the seed's size)."""
    return max(1000, LEAK_BUDGET * 2 // max(3 * seed_size, 1))


@pytest.mark.parametrize("name", sorted(all_seeds()))
def test_coverage_guided_fuzzing(name, tmp_path):
    pytest.importorskip("atheris", reason="make stress installs atheris")
    files, top = all_seeds()[name]
    corpus = tmp_path / "corpus"
    inputs = seconds = 0
    while seconds < SECONDS:
        result = subprocess.run(
            [sys.executable, "-m", "tests.robustness.fuzz", name, str(SECONDS - seconds),
             str(corpus), str(runs_per_process(len(files[top])))],
            cwd=ROOT, capture_output=True, text=True, timeout=SECONDS * 3 + 120)
        assert result.returncode == 0, result.stderr[-4000:]
        done = re.search(r"Done (\d+) runs in (\d+) second", result.stderr)
        assert done, result.stderr[-2000:]
        inputs += int(done.group(1))
        seconds += max(int(done.group(2)), 1)
    SUMMARY.parent.mkdir(exist_ok=True)
    summary = json.loads(SUMMARY.read_text()) if SUMMARY.exists() else {}
    summary[name] = {"inputs": inputs, "seconds": seconds}
    SUMMARY.write_text(json.dumps(summary, indent=1, sort_keys=True))

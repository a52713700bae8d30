"""Coverage-guided fuzzing of one seed's read paths with atheris (libFuzzer).

    python -m tests.robustness.fuzz SEED_NAME SECONDS [CORPUS_DIR [RUNS]]

The seed's top file is the starting corpus; libFuzzer mutates it guided by the
coverage of the engine's code, and every input goes through the same harness as
the hypothesis tests (a VDError or a clean read, no write, bounded memory and
time).  Any other outcome is a crash that libFuzzer reports and saves (exit
status non-zero); libFuzzer's last line says how many inputs ran.  RUNS, when
given, ends the process after that many inputs even if time is left.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["vdgui"]):
    from tests.robustness.harness import exercise
    from tests.robustness.seeds import all_seeds


def main() -> int:
    name, seconds = sys.argv[1], int(sys.argv[2])
    corpus = Path(sys.argv[3]) if len(sys.argv) > 3 else Path(tempfile.mkdtemp())
    runs = [f"-runs={sys.argv[4]}"] if len(sys.argv) > 4 else []
    files, top = all_seeds()[name]
    corpus.mkdir(parents=True, exist_ok=True)
    (corpus / "seed").write_bytes(files[top])

    def one_input(data: bytes) -> None:
        exercise({**files, top: data}, top)

    atheris.Setup([sys.argv[0], f"-max_total_time={seconds}", "-rss_limit_mb=4096",
                   "-max_len=" + str(max(len(files[top]) * 2, 1 << 16)), *runs,
                   f"-artifact_prefix={corpus}/", str(corpus)], one_input)
    atheris.Fuzz()  # exits the process when the time is up
    return 0


if __name__ == "__main__":
    sys.exit(main())

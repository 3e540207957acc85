"""``make demo``: the main jobs on the built-in synthetic dataset, a summary, then the tables.

The report (``python -m ulsad_bench.report outputs/demo --out reports``) writes the tables and
figures for the demo's runs to ``reports/`` and prints Table 1.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .records import main as list_records
from .report import main as report

RESULTS = Path("outputs/demo")
REPORTS = Path("reports")
MODELS = "padim"


def main() -> int:
    command = [
        sys.executable,
        "run.py",
        "-m",
        f"model={MODELS}",
        "dataset.category=texture,pinbox",
        "seed=0",
        f"output_root={RESULTS}",
    ]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)
    list_records([str(RESULTS)])
    print(flush=True)
    return report([str(RESULTS), "--out", str(REPORTS)])


if __name__ == "__main__":
    raise SystemExit(main())

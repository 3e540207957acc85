"""``make demo``: the main jobs on the built-in synthetic dataset, then a summary."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .records import main as list_records

RESULTS = Path("outputs/demo")
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
    return list_records([str(RESULTS)])


if __name__ == "__main__":
    raise SystemExit(main())

"""``make demo``: the main jobs on the built-in synthetic dataset, a summary, then the tables.

Each model runs as its own Hydra multirun (``run.py -m +demo=<model>``) over both synthetic
categories (``texture``, ``pinbox``), seed 0, with the settings of its preset
``experiments/demo/<model>.yaml``: small enough for a 2-core CPU, *not* the paper's (each
preset says how; every record carries them). EfficientAD is left out by default (its 256-pixel
training is slow on a CPU): ``python -m ulsad_bench.demo --models ulsad,patchcore,padim,dfr,efficientad``.

The report (``python -m ulsad_bench.report outputs/demo``) then writes the tables and figures
for the demo's runs to ``outputs/demo/reports/`` (beside them, so ``make tables`` on other results
never overwrites them) and prints Table 1.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

from .config import EXPERIMENTS_DIR, REPO
from .records import main as list_records
from .report import main as report

RESULTS = Path("outputs/demo")
PRESETS = EXPERIMENTS_DIR / "demo"
DEMO_MODELS = sorted(path.stem for path in PRESETS.glob("*.yaml"))
DEFAULT_MODELS = "ulsad,patchcore,padim,dfr"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the demo jobs on the synthetic dataset, then the tables.")
    parser.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated, from {', '.join(DEMO_MODELS)}")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--reports", type=Path, default=None, help="default: RESULTS/reports")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(DEMO_MODELS))
    if unknown:
        parser.error(f"unknown demo model(s) {', '.join(unknown)}; choose from {', '.join(DEMO_MODELS)}")
    start = time.perf_counter()
    failed = []
    for model in models:
        command = [
            sys.executable,
            str(REPO / "run.py"),
            "-m",
            f"+demo={model}",
            "dataset.category=texture,pinbox",
            "seed=0",
            f"output_root={args.results}",
        ]
        print("+", shlex.join(command), flush=True)
        if subprocess.run(command).returncode != 0:  # a failed job is recorded; the other models still run
            failed.append(model)
    print(flush=True)
    list_records([str(args.results)])
    print(
        f"\ndemo jobs took {time.perf_counter() - start:.0f} s; demo settings: "
        + ", ".join(str((PRESETS / f"{m}.yaml").relative_to(REPO)) for m in models),
        flush=True,
    )
    code = report([str(args.results), *(["--out", str(args.reports)] if args.reports else [])])
    if failed:
        print(f"demo: jobs of {', '.join(failed)} failed (see the failed records above)", file=sys.stderr)
    return code or (1 if failed else 0)


if __name__ == "__main__":
    raise SystemExit(main())

"""``make demo``: the main jobs on the built-in synthetic dataset, a summary, then the tables.

Each model runs as its own Hydra multirun over both synthetic categories (``texture``,
``pinbox``), seed 0, with settings small enough for a 2-core CPU (listed in ``DEMO_RUNS`` and
printed; every record carries them). They are *not* the paper's settings: backbones are
randomly initialised (the synthetic set asks for it), ULSAD runs at a third of its width
(c* = 128) for 100 epochs (``output_relu=auto`` drops the FRN's output ReLU for random
weights, see ``conf/model/ulsad.yaml``), DFR for 2 epochs. EfficientAD is left out by default
(its 256-pixel training is minutes per job on a CPU):
``python -m ulsad_bench.demo --models ulsad,patchcore,padim,dfr,efficientad``.

The report (``python -m ulsad_bench.report outputs/demo --out reports``) then writes the
tables and figures for the demo's runs to ``reports/`` and prints Table 1.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

from .records import main as list_records
from .report import main as report

RESULTS = Path("outputs/demo")
REPORTS = Path("reports")
DEMO_RUNS: dict[str, list[str]] = {
    "ulsad": ["model.feature_dim=128", "model.epochs=100"],
    "patchcore": [],
    "padim": [],
    "dfr": ["model.epochs=2"],
    "efficientad": ["model.steps=100", "model.distillation.steps=20", "model.distillation.batch_size=4"],
}
DEFAULT_MODELS = "ulsad,patchcore,padim,dfr"
PROFILE = ["profile.warmup_batches=1", "profile.timed_batches=2"]  # batches of 32, as Table 4


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the demo jobs on the synthetic dataset, then the tables.")
    parser.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated, from {', '.join(DEMO_RUNS)}")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--reports", type=Path, default=REPORTS)
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(DEMO_RUNS))
    if unknown:
        parser.error(f"unknown demo model(s) {', '.join(unknown)}; choose from {', '.join(DEMO_RUNS)}")
    start = time.perf_counter()
    failed = []
    for model in models:
        command = [
            sys.executable,
            "run.py",
            "-m",
            f"model={model}",
            "dataset.category=texture,pinbox",
            "seed=0",
            f"output_root={args.results}",
            *PROFILE,
            *DEMO_RUNS[model],
        ]
        print("+", shlex.join(command), flush=True)
        if subprocess.run(command).returncode != 0:  # a failed job is recorded; the other models still run
            failed.append(model)
    print(flush=True)
    list_records([str(args.results)])
    print(
        f"\ndemo jobs took {time.perf_counter() - start:.0f} s; demo settings: "
        + "; ".join(f"{m}: {' '.join(DEMO_RUNS[m]) or 'defaults'}" for m in models),
        flush=True,
    )
    code = report([str(args.results), "--out", str(args.reports)])
    if failed:
        print(f"demo: jobs of {', '.join(failed)} failed (see the failed records above)", file=sys.stderr)
    return code or (1 if failed else 0)


if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m ulsad_bench.report RESULTS_DIR [--out reports] [--paper]``."""

from .build import main

raise SystemExit(main())

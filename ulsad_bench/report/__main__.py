"""``python -m ulsad_bench.report RESULTS_DIR [--out DIR] [--paper]`` (default DIR: RESULTS_DIR/reports)."""

from .build import main

raise SystemExit(main())

"""ulsad-bench: a benchmark harness reproducing ULSAD (TMLR 2024) and its baselines."""

from . import config  # noqa: F401  (registers the config resolvers and ULSAD_BENCH_ROOT: ulsad_bench/config.py)

__version__ = "0.1.0"

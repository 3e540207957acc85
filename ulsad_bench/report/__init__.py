"""Reports: the paper's tables (LaTeX and Markdown) and figures, rendered from run records.

``python -m ulsad_bench.report RESULTS_DIR [--out DIR] [--paper]`` (``make tables``), into
``RESULTS_DIR/reports`` by default.
Modules: :mod:`.load` (records -> DataFrame, checks), :mod:`.aggregate` (mean ± std over
seeds), :mod:`.studies` (ULSAD's ablation / backbone / quantile runs), :mod:`.tables` (the
paper's tables), :mod:`.grid` and :mod:`.table` (layout, best / second best),
:mod:`.audit` (marks and notes), :mod:`.render_markdown`, :mod:`.render_latex`,
:mod:`.figures`, :mod:`.paper` (the published numbers, ``paper_results.csv``), :mod:`.build`
(the command).
"""

from .build import Report, build_report, main
from .load import Results, load_results
from .paper import Paper, load_paper

__all__ = ["Paper", "Report", "Results", "build_report", "load_paper", "load_results", "main"]

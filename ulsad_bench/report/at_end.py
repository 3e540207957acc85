"""A Hydra callback that writes the report when a multirun ends (``+experiment=protocol_gap`` uses it).

``python run.py -m +experiment=protocol_gap`` then leaves the ``protocol_gap`` tables and figure
in ``out`` (default ``<sweep folder>/reports/``) with no second command; ``python -m ulsad_bench.report`` does
the same by hand.
"""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback

from .build import main


class WriteReport(Callback):
    """At the end of a multirun: the report of every record under the sweep's folder."""

    def __init__(self, out: str | None = None) -> None:
        self.out = out

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        main([str(config.hydra.sweep.dir), *(["--out", self.out] if self.out else [])])

"""The paper's published numbers (``paper_results.csv``), transcribed from Tables 1-4 and 7-30.

Columns ``table, dataset, metric, category, method, mean, std``:

- ``mean``/``std``: exactly as printed (``84.1`` stays 84.1), in percent; throughput in img/s
  and GPU memory in GB (Table 4). ``std`` is the ± the paper prints (ULSAD only); empty where it
  prints none.
- ``metric``: image_auroc, pixel_auroc, aupro, throughput or peak_memory_gb. Table 2's
  ``96.73|75.41`` cells give a pixel_auroc and an aupro row; Tables 3, 28, 29, 30's
  ``I-AUROC|P-AUROC|P-AUPRO`` cells give image_auroc, pixel_auroc and aupro rows.
- ``category``: a category, or ``mean`` for a dataset average (Tables 1-4, each table's Mean row).
- ``dataset``: btad, mpdd, mvtec, mvtec_loco, visa (the config names). Tables 22-24 are the
  structural anomalies of MVTec LOCO, Tables 25-27 the logical ones (``naming.KIND_TABLES``).
- ``method``: the paper's short name (CFLOW, DRÆM, FastFlow, PaDiM, PatchCore, RD, DFR, EffAD,
  ULSAD). The ablations are ``ULSAD | <setting>`` in the harness's own config keys, so a measured
  run is matched to its paper number by its config values:

  - Table 3: ``ULSAD | row=N lambda_l=L [lambda_g=G] loss_lg=true|false loss_pg=P branch=B``.
    The paper's columns map as: λg "-" (the local branch alone) -> ``branch=local`` and no
    lambda_g; L^d_pg ✓ -> ``loss_pg=l2``; L_pg ✓ -> ``loss_pg=attention``; neither -> ``none``;
    L_lg ✓ -> ``loss_lg=true``.
  - Table 28 (local branch): ``ULSAD | lambda_l=L loss_lg=false loss_pg=none branch=local``.
  - Table 29 (whole model): ``ULSAD | lambda_l=L lambda_g=L loss_lg=... loss_pg=l2|attention branch=both``.
  - Table 30: ``ULSAD | backbone=<torchvision name>`` (the paper's "Wide-ResNet100-2" is
    wide_resnet101_2, the network its Figure 7 text names).
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from importlib import resources

import pandas as pd

from .naming import EXTENDED_TABLES, KIND_TABLES
from .table import Value

CSV_NAME = "paper_results.csv"
COLUMNS = ["table", "dataset", "metric", "category", "method", "mean", "std"]
SETTING_TABLES = (3, 28, 29)  # ULSAD ablation settings, searched in this order
ROW = re.compile(r"\brow=(\d+)\s*")


@lru_cache(maxsize=1)
def load_paper() -> pd.DataFrame:
    """The CSV as a DataFrame (``mean``/``std`` as floats, NaN where empty; ``table`` as int)."""
    with resources.files(__package__).joinpath(CSV_NAME).open(encoding="utf-8") as handle:
        frame = pd.read_csv(handle, dtype=str, keep_default_na=False)
    frame["table"] = frame["table"].astype(int)
    for column in ("mean", "std"):
        frame[column] = pd.to_numeric(frame[column].replace("", float("nan")))
    return frame


def setting_of(method: str) -> str:
    """``"ULSAD | row=4 lambda_l=0.0 ..."`` -> ``"lambda_l=0.0 ..."`` (the setting, no row number)."""
    _, _, setting = method.partition(" | ")
    return ROW.sub("", setting).strip()


def table3_row(method: str) -> int | None:
    found = ROW.search(method)
    return int(found.group(1)) if found else None


class Paper:
    """Look-ups of the paper's numbers as printable :class:`~.table.Value`\\ s."""

    def __init__(self, frame: pd.DataFrame | None = None) -> None:
        self.frame = load_paper() if frame is None else frame
        self._index = {
            (int(r.table), r.dataset, r.metric, r.category, r.method): (float(r.mean), float(r.std))
            for r in self.frame.itertuples()
        }
        settings = self.frame[self.frame["table"].isin(SETTING_TABLES)]
        self._setting_method: dict[str, tuple[int, str]] = {}
        for table in SETTING_TABLES:
            for method in settings.loc[settings["table"] == table, "method"].unique():
                self._setting_method.setdefault(setting_of(method), (table, method))

    def value(self, table: int, dataset: str, metric: str, category: str, method: str) -> Value | None:
        """The printed number (and its ±), or None when the paper has no such cell."""
        found = self._index.get((table, dataset, metric, category, method))
        if found is None:
            return None
        mean, std = found
        return Value(mean, None if math.isnan(std) else std)

    def main(self, dataset: str, metric: str, category: str, method: str) -> Value | None:
        """A method's number in the extended tables (7-21: categories and Mean) or Table 4."""
        table = 4 if metric in ("throughput", "peak_memory_gb") else EXTENDED_TABLES.get((dataset, metric))
        return None if table is None else self.value(table, dataset, metric, category, method)

    def kind(self, kind: str, metric: str, category: str, method: str) -> Value | None:
        """MVTec LOCO per anomaly kind (Tables 22-27)."""
        table = KIND_TABLES.get((kind, metric))
        return None if table is None else self.value(table, "mvtec_loco", metric, category, method)

    def setting(self, setting: str) -> tuple[int, str] | None:
        """(table, method) of a ULSAD ablation setting in Tables 3, 28 or 29, or None."""
        return self._setting_method.get(setting)

    def ablation(self, setting: str, metric: str, category: str = "mean") -> Value | None:
        found = self.setting(setting)
        return None if found is None else self.value(found[0], "mvtec_loco", metric, category, found[1])

    def table3_rows(self) -> list[tuple[int, str]]:
        """(row number, setting) of Table 3, in the paper's order."""
        methods = self.frame.loc[self.frame["table"] == 3, "method"].unique()
        return sorted((table3_row(m) or 0, setting_of(m)) for m in methods)

    def backbone(self, backbone: str, metric: str, category: str) -> Value | None:
        return self.value(30, "mvtec_loco", metric, category, f"ULSAD | backbone={backbone}")

"""ULSAD's studies, found from config values (never from variant names).

A study varies one *axis* while everything else stays fixed:

- ablation (Table 3): ``model.lambda_l``, ``lambda_g``, ``loss_lg``, ``loss_pg``, ``branch``;
- backbone (Table 30, Figure 7): ``backbone.name``;
- quantiles (Figure 8): ``model.alpha`` and ``model.beta``.

For one dataset, ULSAD's ok records are grouped by their *context*: the experiment config
without the axis keys, the variant and the category. The context holding the most distinct axis
values is the study (ties: more records); a study needs two axis values at least. When
several runs (variants) of one context share an axis value (e.g. the default run and the
``t3-row10`` preset), the one with most records is used (then: the one with a variant name,
then by name) and the others are named in the notes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

ABLATION_KEYS = ("model.lambda_l", "model.lambda_g", "model.loss_lg", "model.loss_pg", "model.branch")
BACKBONE_KEYS = ("backbone.name",)
QUANTILE_KEYS = ("model.alpha", "model.beta")
NOT_CONTEXT = ("variant", "dataset.category")
PAPER_QUANTILES = (0.9, 0.995)  # Section 4.1: the selected value Figure 8 highlights


def _float(value: Any) -> float:
    return float(value) if value is not None else math.nan


def _loss_pg(value: Any) -> str:
    """``loss_pg`` as one of attention | l2 | none (``off``, null and false mean none)."""
    text = str(value).lower() if value not in (None, False) else "none"
    return "none" if text in ("off", "none", "false", "null") else text


def _flag(value: Any) -> bool:
    return str(value).lower() in ("true", "1", "yes")


@dataclass(frozen=True)
class Setting:
    """ULSAD's ablation switches (Table 3's columns) as config values."""

    lambda_l: float
    lambda_g: float | None  # None when only the local branch is used (Table 3: "-")
    loss_lg: bool
    loss_pg: str  # attention (L_pg) | l2 (L^d_pg) | none
    branch: str  # both | local | global

    def key(self) -> str:
        """The canonical text the paper CSV uses (see :mod:`.paper`)."""
        parts = [f"lambda_l={self.lambda_l!r}"]
        if self.lambda_g is not None:
            parts.append(f"lambda_g={self.lambda_g!r}")
        parts += [f"loss_lg={'true' if self.loss_lg else 'false'}", f"loss_pg={self.loss_pg}", f"branch={self.branch}"]
        return " ".join(parts)

    @classmethod
    def parse(cls, key: str) -> Setting:
        values = dict(part.split("=", 1) for part in key.split())
        return cls(
            lambda_l=float(values["lambda_l"]),
            lambda_g=float(values["lambda_g"]) if "lambda_g" in values else None,
            loss_lg=values["loss_lg"] == "true",
            loss_pg=values["loss_pg"],
            branch=values["branch"],
        )


def setting_of(row: pd.Series) -> Setting:
    branch = str(row["branch"])
    return Setting(
        lambda_l=round(_float(row["lambda_l"]), 6),
        lambda_g=None if branch == "local" else round(_float(row["lambda_g"]), 6),
        loss_lg=_flag(row["loss_lg"]),
        loss_pg=_loss_pg(row["loss_pg"]),
        branch=branch,
    )


@dataclass
class Arm:
    """One compared value of a study and the records that measure it."""

    value: Hashable
    frame: pd.DataFrame
    variant: str
    backbone: str
    others: list[str] = field(default_factory=list)


@dataclass
class Study:
    axis: str
    dataset: str
    arms: list[Arm]
    context: dict[str, Any]


def _context(experiment: str, axis_keys: tuple[str, ...]) -> str:
    config = json.loads(experiment)
    return json.dumps({k: v for k, v in config.items() if k not in axis_keys and k not in NOT_CONTEXT}, sort_keys=True)


def find_study(
    ok: pd.DataFrame, dataset: str, axis: str, axis_keys: tuple[str, ...], value_of: Callable[[pd.Series], Hashable]
) -> Study | None:
    """The study of ``axis`` on ``dataset`` (see the module docstring), or None."""
    frame = ok[(ok["model"] == "ulsad") & (ok["dataset"] == dataset)].copy()
    if frame.empty:
        return None
    frame["_context"] = [_context(e, axis_keys) for e in frame["experiment"]]
    frame["_value"] = [value_of(row) for _, row in frame.iterrows()]
    counts = frame.groupby("_context").agg(values=("_value", "nunique"), records=("path", "size"))
    counts = counts.sort_values(["values", "records"], ascending=False)
    if counts.empty or int(counts["values"].iloc[0]) < 2:
        return None
    context = str(counts.index[0])
    chosen = frame[frame["_context"] == context]
    arms = []
    for value, runs in chosen.groupby("_value", sort=False):
        groups = sorted(
            ((variant, backbone), group) for (variant, backbone), group in runs.groupby(["variant", "backbone"])
        )
        groups.sort(key=lambda item: (-len(item[1]), item[0][0] == "", item[0][0]))
        (variant, backbone), group = groups[0]
        others = [f"variant {v or '(none)'} / {b} ({len(g)} records)" for (v, b), g in groups[1:]]
        arms.append(Arm(value, group.drop(columns=["_context", "_value"]), variant, backbone, others))
    return Study(axis, dataset, arms, json.loads(context))


def ablation_study(ok: pd.DataFrame, dataset: str) -> Study | None:
    """Table 3: arms are :class:`Setting`\\ s."""
    return find_study(ok, dataset, "ablation", ABLATION_KEYS, setting_of)


def backbone_study(ok: pd.DataFrame, dataset: str) -> Study | None:
    """Table 30 / Figure 7: arms are backbone names."""
    return find_study(ok, dataset, "backbone", BACKBONE_KEYS, lambda row: str(row["backbone"]))


def quantile_study(ok: pd.DataFrame, dataset: str) -> Study | None:
    """Figure 8: arms are (alpha, beta) pairs."""
    return find_study(
        ok,
        dataset,
        "quantiles",
        QUANTILE_KEYS,
        lambda row: (round(_float(row["alpha"]), 6), round(_float(row["beta"]), 6)),
    )

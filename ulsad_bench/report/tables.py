"""The paper's tables, built from run records.

- Table 1 (image AUROC) and Table 2 (pixel AUROC | AUPRO): methods x datasets (dataset means).
- Table 4: I-AUROC, P-AUROC, AUPRO, throughput and memory per method, one table per dataset.
- Tables 7-21: one metric per dataset, categories x methods, with the Mean row.
- Tables 22-27: the same per anomaly kind (structural, logical) where records have them.
- Table 3: ULSAD's ablation settings (:mod:`.studies`), I-AUROC | P-AUROC | P-AUPRO.
- Table 30: ULSAD per backbone, categories x backbones.

A dataset with a benchmark of its own (MVTec AD 2: :data:`.naming.OFFICIAL_METRICS`) gets its official
metrics first in its tables (Table 4, the per-category tables, ``metrics_<dataset>``); AU-PRO at every
FPR limit the records have (``metrics.pro_limits``) is shown beside the paper's AUPRO
(:func:`dataset_metrics`).

Tables 1, 2, 4 and 7-27 use the runs without a variant (the paper's main protocol); variant runs
(ablations, presets) feed Tables 3 and 30 and Figures 7 and 8, which read their settings from
the config values. A dataset outside the paper (e.g. synthetic) gets the same layouts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import pandas as pd

from ..metrics import SPRO_LIMITS
from .aggregate import FULL_SEEDS
from .audit import Audit
from .grid import Series, Slot, build_grid
from .load import ULSAD_KEYS, Results
from .naming import (
    ALL_METRICS,
    EXTENDED_TABLES,
    KIND_TABLES,
    KINDS,
    METRICS,
    OFFICIAL_METRICS,
    PAPER_DATASETS,
    PAPER_METHODS,
    TABLE1_ORDER,
    backbone_label,
    backbone_order,
    dataset_label,
    dataset_order,
    long_method_name,
    method_name,
    metric_label,
    metric_title,
    order_key,
    pro_limit_of,
    protocol_label,
)
from .paper import Paper
from .protocol_gap import protocol_gap_tables
from .studies import Setting, Study, ablation_study, backbone_study
from .table import Table, Text, Value

ABLATION_METRICS_LABEL: Text = ("I-AUROC | P-AUROC | P-AUPRO", r"I-AUROC $|$ P-AUROC $|$ P-AUPRO")
TABLE3_CORNER: list[Text] = [
    "#",
    ("λ<sub>l</sub>", r"$\lambda_l$"),
    ("λ<sub>g</sub>", r"$\lambda_g$"),
    ("L<sub>lg</sub>", r"$L_{lg}$"),
    ("L<sup>d</sup><sub>pg</sub>", r"$L^{d}_{pg}$"),
    ("L<sub>pg</sub>", r"$L_{pg}$"),
]
TABLE4_ROWS: list[tuple[str, Text]] = [
    ("image_auroc", ("I-AUROC ↑", r"I-AUROC $\uparrow$")),
    ("pixel_auroc", ("P-AUROC ↑", r"P-AUROC $\uparrow$")),
    ("aupro", ("P-AUPRO ↑", r"P-AUPRO $\uparrow$")),
    ("throughput", ("Throughput (img/s) ↑", r"Throughput (img/s) $\uparrow$")),
    ("peak_memory_gb", ("Peak memory (GB) ↓", r"Peak memory (GB) $\downarrow$")),
    ("throughput_batch1", ("Throughput, batch 1 (img/s) ↑", r"Throughput, batch 1 (img/s) $\uparrow$")),
    ("latency_ms", ("Latency, batch 1 (ms) ↓", r"Latency, batch 1 (ms) $\downarrow$")),
]


@dataclass(frozen=True)
class Method:
    """A method of the main tables: a model's runs without a variant. ``backbone`` is None when
    the model ran with one backbone per dataset (it may differ between datasets, see the notes);
    a model run with several backbones on one dataset is one method per backbone."""

    model: str
    backbone: str | None
    name: str  # the paper's short name
    label: str  # as printed (short name, plus the backbone when a model ran with several, plus the protocol)
    protocol: str = "clean"  # protocol.tag: runs of the authors' protocol (or a part of it) are methods apart

    @property
    def scope(self) -> dict[str, Any]:
        scope = {"model": self.model, "variant": "", "protocol": self.protocol}
        return scope if self.backbone is None else {**scope, "backbone": self.backbone}

    def select(self, frame: pd.DataFrame, **where: Any) -> pd.DataFrame:
        """The rows of ``frame`` of this method (and ``where``: column = value)."""
        mask = (frame["model"] == self.model) & (frame["protocol"] == self.protocol)
        if self.backbone is not None:
            mask &= frame["backbone"] == self.backbone
        for column, value in where.items():
            mask &= frame[column] == value
        return frame[mask]


@dataclass
class Context:
    """Everything the builders read: the records, the paper's numbers, and derived views.

    Attributes:
        spread: ``std`` (mean ± std, the paper's style) or ``ci`` (95% intervals) in every table.
        tied: per (dataset, metric), the methods not significantly different from the best
            (:func:`.stat_tables.tied_with_best_methods`, set by the report before the tables are
            built), marked in the dataset means; None: no marks.
        min_seeds: the fewest seeds per category a method needs to enter the statistics' tests and
            ranks (default the paper's five; ``--min-seeds`` to test a smaller run, which its notes say).
    """

    results: Results
    paper: Paper = field(default_factory=Paper)
    spread: str = "std"
    tied: dict[tuple[str, str], frozenset[Method] | None] | None = None
    min_seeds: int = FULL_SEEDS

    def mark_tie(self, audit: Audit, value: Value, method: Method, dataset: str, metric: str) -> Value:
        """``value`` (``method``'s dataset mean of ``metric``) marked when it is statistically
        tied with the best (:meth:`Audit.mark_tie`); unchanged without a test result."""
        if self.tied is not None and (dataset, metric) in self.tied:
            audit.mark_tie(value, self.tied[(dataset, metric)], method, dataset_label(dataset))
        return value

    @cached_property
    def ok(self) -> pd.DataFrame:
        return self.results.ok

    @cached_property
    def main(self) -> pd.DataFrame:
        """Ok records of runs without a variant: the main tables' records (the columns they read)."""
        heavy = ["experiment", "categories", "config_key", "config_hash", "error", "finished", "path"]
        return self.ok.loc[self.ok["variant"] == "", [c for c in self.ok.columns if c not in heavy]]

    @cached_property
    def main_all(self) -> pd.DataFrame:
        """Records of every status of runs without a variant (a method whose runs all failed still shows)."""
        return self.results.records[self.results.records["variant"] == ""]

    @cached_property
    def methods(self) -> list[Method]:
        methods = []
        for (model, protocol), runs in self.main_all.groupby(["model", "protocol"]):
            name, tag = method_name(str(model)), str(protocol)
            suffix = "" if tag == "clean" else f" {protocol_label(tag)}"
            resolved = runs[runs["backbone"] != ""]  # a job refused before its backbone was resolved names none:
            runs = resolved if not resolved.empty else runs  # it is listed as a failure, never a method of its own
            if runs.groupby("dataset")["backbone"].nunique().max() > 1:
                methods += [
                    Method(str(model), str(b), name, f"{name} ({backbone_label(str(b))}){suffix}", tag)
                    for b in backbone_order(set(runs["backbone"]))
                ]
            else:
                methods.append(Method(str(model), None, name, f"{name}{suffix}", tag))
        return sorted(methods, key=lambda x: (order_key(PAPER_METHODS, x.name), x.protocol != "clean", x.label))

    @cached_property
    def _method_frames(self) -> dict[tuple[Method, str], pd.DataFrame]:  # filled by frame_of
        return {}

    def frame_of(self, method: Method, dataset: str, category: str | None = None) -> pd.DataFrame:
        """The method's ok main records on ``dataset`` (and ``category``), cached."""
        key = (method, dataset)
        if key not in self._method_frames:
            frame = method.select(self.main, dataset=dataset)
            self._method_frames[key] = frame
            for name, group in frame.groupby("category"):
                self._method_frames[(method, f"{dataset}/{name}")] = group
        if category is None:
            return self._method_frames[key]
        return self._method_frames.get((method, f"{dataset}/{category}"), self.main.iloc[:0])

    def datasets(self) -> list[str]:
        return dataset_order(set(self.main_all["dataset"]))

    def methods_in(self, dataset: str) -> list[Method]:
        """The methods with a record (of any status) on ``dataset``."""
        return [m for m in self.methods if not m.select(self.main_all, dataset=dataset).empty]

    @cached_property
    def _expected(self) -> dict[str, list[str]]:
        records = self.results.records
        expected: dict[str, list[str]] = {}
        for dataset, group in records.groupby("dataset"):
            names: dict[str, None] = {}
            for categories in group["categories"]:
                names.update(dict.fromkeys(categories))
            names.update(dict.fromkeys(sorted(set(group["category"]) - set(names))))
            expected[str(dataset)] = list(names)
        return expected

    def expected(self, dataset: str) -> list[str]:
        """The dataset's categories: those its configs list, then any other with a record."""
        return self._expected.get(dataset, [])

    def backbone_note(self, methods: list[Method], datasets: list[str]) -> str:
        """Which backbone (and weights) each method used on each dataset."""
        parts = []
        for method in methods:
            used = []
            for dataset in datasets:
                frame = method.select(self.main_all, dataset=dataset)
                for backbone, runs in frame.groupby("backbone"):
                    kinds = ", ".join(sorted(set(runs["weights_policy"]) - {""})) or "weights unknown"
                    where = f" on {dataset_label(dataset)}" if len(datasets) > 1 else ""
                    used.append(f"{backbone_label(str(backbone))} ({kinds}){where}")
            parts.append(f"{method.label}: {', '.join(used) or 'no record'}")
        return "Backbones: " + "; ".join(parts) + "."


def _paper_order(order: tuple[str, ...], compare: bool, measured: list[Method]) -> list[Any]:
    """Measured methods in the paper's order; with ``compare`` the paper-only methods too (as names)."""
    names = {m.name for m in measured}
    items: list[Any] = []
    for name in order:
        items += [m for m in measured if m.name == name]
        if compare and name not in names:
            items.append(name)
    return items + [m for m in measured if m.name not in order]


def _main_series(
    methods: list[Method],
    order: tuple[str, ...],
    compare: bool,
    measure: Any,
    paper: Any,
    long_names: bool,
) -> list[Series]:
    series = []
    for item in _paper_order(order, compare, methods):
        if isinstance(item, str):
            label = long_method_name(item) if long_names else item
            series.append(Series([label], None, lambda slot, n=item: paper(slot, n)))
        else:
            label = long_method_name(item.name) + item.label[len(item.name) :] if long_names else item.label
            series.append(
                Series([label], lambda slot, m=item: measure(slot, m), lambda slot, m=item: paper(slot, m.name))
            )
    return series


def _dataset_mean(ctx: Context, audit: Audit, method: Method, dataset: str, metric: str, decimals: int = 2) -> Value:
    frame = ctx.frame_of(method, dataset)
    where = f"{method.label} / {dataset_label(dataset)}"
    value = audit.measure(frame, metric, where, {**method.scope, "dataset": dataset}, ctx.expected(dataset), decimals)
    return ctx.mark_tie(audit, value, method, dataset, metric)


def _finish_main(
    ctx: Context,
    audit: Audit,
    table: Table,
    per: str | None,
    compare: bool,
    methods: list[Method],
    datasets: list[str],
    **kw: str,
) -> Table:
    audit.extra_notes.append(ctx.backbone_note(methods, datasets))
    return audit.finish(table, None if compare else per, **kw)


def _dataset_means_table(
    ctx: Context, compare: bool, number: int, name: str, title: str, metrics: tuple[str, ...], per: str
) -> Table | None:
    """Tables 1 and 2: the dataset means of ``metrics``, methods (rows) x datasets (columns)."""
    if not ctx.methods:
        return None
    audit = Audit(ctx.results, ctx.spread)
    datasets = dataset_order(set(ctx.datasets()) | (set(PAPER_DATASETS) if compare else set()))
    slots = [Slot(d, dataset_label(d), metrics) for d in datasets]
    series = _main_series(
        ctx.methods,
        TABLE1_ORDER,
        compare,
        lambda slot, m: [_dataset_mean(ctx, audit, m, slot.key, metric) for metric in slot.parts],
        lambda slot, method: [ctx.paper.value(number, slot.key, metric, "mean", method) for metric in slot.parts],
        long_names=True,
    )
    table = build_grid(
        name + ("_vs_paper" if compare else ""),
        title + (" vs the paper" if compare else ""),
        series,
        slots,
        series_as="rows",
        corner=["Method"],
        compare=compare,
    )
    return _finish_main(ctx, audit, table, per, compare, ctx.methods, ctx.datasets())


def table1(ctx: Context, compare: bool = False) -> Table | None:
    """Table 1: image AUROC, methods (rows) x datasets (columns)."""
    return _dataset_means_table(
        ctx,
        compare,
        1,
        "table01_image_auroc",
        "Table 1: Average detection performance: image AUROC (%)",
        ("image_auroc",),
        "dataset (column)",
    )


def table2(ctx: Context, compare: bool = False) -> Table | None:
    """Table 2: pixel AUROC | AUPRO, methods (rows) x datasets (columns)."""
    return _dataset_means_table(
        ctx,
        compare,
        2,
        "table02_pixel_auroc_aupro",
        "Table 2: Average segmentation performance: pixel AUROC | AUPRO (%)",
        ("pixel_auroc", "aupro"),
        "dataset and metric",
    )


def pro_metrics(ctx: Context, dataset: str) -> list[str]:
    """AU-PRO's record keys with a value on ``dataset``, by FPR limit: ``aupro`` (0.3) and every
    ``aupro_<limit>`` of ``metrics.pro_limits``."""
    frame = ctx.main[ctx.main["dataset"] == dataset]
    found = [(limit, c) for c in frame.columns if (limit := pro_limit_of(c)) is not None and frame[c].notna().any()]
    return [key for _, key in sorted([*found, (0.3, "aupro")])]


def dataset_metrics(ctx: Context, dataset: str, base: tuple[str, ...]) -> list[str]:
    """The metrics of ``dataset``'s tables: its official ones first (:data:`.naming.OFFICIAL_METRICS`,
    those the records have), then ``base`` with ``aupro`` widened to every AU-PRO limit recorded."""
    official = [m for m in OFFICIAL_METRICS.get(dataset, ()) if m in ctx.main.columns]
    widened = [m for metric in base for m in (pro_metrics(ctx, dataset) if metric == "aupro" else [metric])]
    return list(dict.fromkeys([*official, *widened]))


def _metric_slots(ctx: Context, dataset: str, metrics: list[str]) -> list[Slot]:
    limits = len(pro_metrics(ctx, dataset)) > 1
    return [Slot(metric, metric_label(metric, limits), (metric,)) for metric in metrics]


def table4(ctx: Context, dataset: str, compare: bool = False) -> Table | None:
    """Table 4: metrics and efficiency (rows) x methods (columns) on one dataset (a dataset's official
    metrics first, :func:`dataset_metrics`)."""
    methods = ctx.methods_in(dataset)
    if not methods or (compare and dataset != "mvtec_loco"):
        return None
    audit = Audit(ctx.results, ctx.spread)
    rows = dict(TABLE4_ROWS)
    metrics = dataset_metrics(ctx, dataset, METRICS)
    limits = len(pro_metrics(ctx, dataset)) > 1
    labels: dict[str, Text] = {
        m: (f"{metric_label(m, limits)} ↑", rf"{metric_label(m, limits)} $\uparrow$") for m in metrics
    }
    slots = [Slot(m, rows[m] if m in rows and not (limits and m == "aupro") else labels[m], (m,)) for m in metrics]
    slots += [Slot(key, label, (key,)) for key, label in TABLE4_ROWS if key not in METRICS]
    series = _main_series(
        methods,
        PAPER_METHODS,
        compare,
        lambda slot, m: [_dataset_mean(ctx, audit, m, dataset, slot.key)],
        lambda slot, name: [ctx.paper.main(dataset, slot.key, "mean", name)],
        long_names=False,
    )
    title = f"Table 4: Memory and computational efficiency on {dataset_label(dataset)}"
    table = build_grid(
        f"table04_efficiency_{dataset}" + ("_vs_paper" if compare else ""),
        title + (" vs the paper" if compare else ""),
        series,
        slots,
        series_as="columns",
        corner=[""],
        compare=compare,
    )
    frame = ctx.main[ctx.main["dataset"] == dataset]
    measured = frame.dropna(subset=["throughput"])
    if not measured.empty:
        devices = ", ".join(sorted(set(measured["efficiency_device"])))
        sizes = ", ".join(str(int(s)) for s in sorted(set(measured["efficiency_batch_size"].dropna())))
        audit.extra_notes.append(
            f"Throughput and memory measured on: {devices}{'; batch size ' + sizes if sizes else ''}; mean over "
            "categories and seeds as for the metrics. Memory: the record's peak_memory_mb / 1024. Batch 1: "
            "single images timed one by one (latency: their median)."
        )
        if measured["efficiency_device"].nunique() > 1:
            audit.extra_warnings.append("EFFICIENCY MEASURED ON DIFFERENT DEVICES")
    if audit.cpu_memory:
        audit.extra_warnings.append("MEMORY MEASURED ON CPU (§), NOT GPU MEMORY")
    return _finish_main(
        ctx,
        audit,
        table,
        "row",
        compare,
        methods,
        [dataset],
        direction="higher is better; memory and latency: lower is better",
    )


def _methods_by_metrics(
    ctx: Context, dataset: str, key: str, title: str, slots: list[Slot], per: str, note: str
) -> Table | None:
    """Methods (rows) x metric slots (columns): dataset means over categories, mean ± std over seeds."""
    methods = ctx.methods_in(dataset)
    if not methods:
        return None
    audit = Audit(ctx.results, ctx.spread)
    series = _main_series(
        methods,
        PAPER_METHODS,
        False,
        lambda slot, m: [_dataset_mean(ctx, audit, m, dataset, part) for part in slot.parts],
        lambda slot, name: [None for _ in slot.parts],
        long_names=False,
    )
    table = build_grid(key, title, series, slots, series_as="rows", corner=["Method"])
    audit.extra_notes.append(note)
    return _finish_main(ctx, audit, table, per, False, methods, [dataset])


#: what the notes of a table with SegF1 or AU-PRO at other limits say about them
SEG_F1_NOTE = (
    "SegF1: the pixel F1 of the test maps binarised at mean + 3 std of the validation images' map pixels (the "
    "official MVTec AD 2 rule, fixed without test data; the record's segmentation_threshold), all test pixels pooled."
)
PRO_NOTE = "AUPRO@l: the same PRO curve integrated up to FPR l and divided by l (metrics.pro_limits)."


def all_metrics(ctx: Context, dataset: str) -> Table | None:
    """Every metric of the records on one dataset, in multi-method benchmarks' layout (e.g. ADer); a
    dataset's official metrics first (:func:`dataset_metrics`)."""
    metrics = dataset_metrics(ctx, dataset, ALL_METRICS)
    slots = _metric_slots(ctx, dataset, metrics)
    title = "image AUROC, AP, F1-max; pixel AUROC, AP, F1-max; AUPRO"
    notes = [
        "AP as sklearn's average_precision_score and F1-max as the best F1 over every threshold, at image level "
        "(image scores) and pixel level (all pixels of all test images); AUPRO up to FPR 0.3 over the union of "
        "the masks (the paper's). Not in the paper."
    ]
    if metrics != list(ALL_METRICS):
        title = ", ".join(str(slot.label) for slot in slots)
        notes += [PRO_NOTE] if len(pro_metrics(ctx, dataset)) > 1 else []
        notes += [SEG_F1_NOTE] if "seg_f1" in metrics else []
    if dataset in OFFICIAL_METRICS:
        official = ", ".join(str(slot.label) for slot in slots if slot.key in OFFICIAL_METRICS[dataset])
        notes.append(f"{dataset_label(dataset)}'s official metrics first: {official}.")
    return _methods_by_metrics(
        ctx,
        dataset,
        f"metrics_{dataset}",
        f"All metrics on {dataset_label(dataset)} (%): {title}",
        slots,
        "column",
        " ".join(notes),
    )


def spro_table(ctx: Context, dataset: str) -> Table | None:
    """AUC-sPRO of MVTec LOCO's official evaluation at each FPR limit: logical | structural | mean."""
    columns = [f"{kind}_spro_{limit:g}" for kind in KINDS for limit in SPRO_LIMITS]
    if ctx.ok.loc[ctx.ok["dataset"] == dataset, columns].dropna(how="all").empty:
        return None
    slots = [
        Slot(
            f"spro_{limit:g}",
            f"FPR ≤ {limit:g}",
            tuple(f"{part}_spro_{limit:g}" for part in ("logical", "structural", "mean")),
        )
        for limit in SPRO_LIMITS
    ]
    return _methods_by_metrics(
        ctx,
        dataset,
        f"spro_{dataset}",
        f"AUC-sPRO (%) on {dataset_label(dataset)} at each FPR limit: logical | structural | mean",
        slots,
        "limit and kind",
        "sPRO as MVTec LOCO's official evaluation defines it (Bergmann et al. 2022): every mask file a channel "
        "with its defect type's saturation threshold from defects_config.json, the mean over channels against "
        "the FPR over all defect-free pixels, at every distinct threshold (the official code uses a refined "
        "subset of thresholds); mean = (logical + structural) / 2 as the official code reports it; limits "
        "0.01, 0.05, 0.1, 0.3, 1 are the official ones, 0.2 is added. Maps and masks at dataset.image_size "
        "(absolute thresholds scaled by the area ratio). The paper's LOCO AUPRO (Tables 2, 11) is over the "
        "union of the masks instead.",
    )


def _categories_with(ctx: Context, dataset: str, column: str) -> list[str]:
    frame = ctx.main[(ctx.main["dataset"] == dataset)].dropna(subset=[column])
    present = set(frame["category"])
    return [c for c in ctx.expected(dataset) if c in present]


def _per_category(
    ctx: Context, dataset: str, column: str, categories: list[str], key: str, title: str, compare: bool, paper: Any
) -> Table | None:
    methods = ctx.methods_in(dataset)
    if not methods:
        return None
    audit = Audit(ctx.results, ctx.spread)
    slots = [Slot(c, c, (column,)) for c in categories] + [Slot("mean", "Mean", (column,), rule=True)]

    def measure(slot: Slot, m: Method) -> list[Value]:
        frame = ctx.frame_of(m, dataset)
        scope = {**m.scope, "dataset": dataset}
        if slot.key == "mean":
            value = audit.measure(frame, column, f"{m.label} / Mean", scope, categories)
            return [ctx.mark_tie(audit, value, m, dataset, column)]
        frame = ctx.frame_of(m, dataset, slot.key)
        return [audit.measure(frame, column, f"{m.label} / {slot.key}", {**scope, "category": slot.key})]

    series = _main_series(
        methods, PAPER_METHODS, compare, measure, lambda slot, name: [paper(slot.key, name)], long_names=False
    )
    table = build_grid(
        key + ("_vs_paper" if compare else ""),
        title + (" vs the paper" if compare else ""),
        series,
        slots,
        series_as="columns",
        corner=["Category"],
        compare=compare,
    )
    return _finish_main(ctx, audit, table, "category (row)", compare, methods, [dataset])


def extended(ctx: Context, dataset: str, metric: str, compare: bool = False) -> Table | None:
    """Tables 7-21: one metric on one dataset, categories (rows) x methods (columns)."""
    number = EXTENDED_TABLES.get((dataset, metric))
    if compare and number is None:
        return None
    name = metric_title(metric)
    if number is None:
        key = f"extended_{dataset}_{metric}"
        title = f"{name} (%) per category on {dataset_label(dataset)} (as Tables 7-21)"
    else:
        key = f"table{number:02d}_{dataset}_{metric}"
        title = f"Table {number}: {name} (%) per category on {dataset_label(dataset)}"
    categories = ctx.expected(dataset)
    return _per_category(
        ctx,
        dataset,
        metric,
        categories,
        key,
        title,
        compare,
        lambda category, name: ctx.paper.main(dataset, metric, category, name),
    )


def kinds(ctx: Context, dataset: str, kind: str, metric: str, compare: bool = False) -> Table | None:
    """Tables 22-27: one metric on one anomaly kind (structural, logical), categories x methods."""
    column = f"{kind}_{metric}"
    categories = _categories_with(ctx, dataset, column)
    if not categories or (compare and dataset != "mvtec_loco"):
        return None
    name = metric_title(metric)
    if dataset == "mvtec_loco":
        number = KIND_TABLES[(kind, metric)]
        key = f"table{number}_{dataset}_{kind}_{metric}"
        title = f"Table {number}: {name} (%) on {kind} anomalies of {dataset_label(dataset)}"
    else:
        key = f"kinds_{dataset}_{kind}_{metric}"
        title = f"{name} (%) on {kind} anomalies of {dataset_label(dataset)} (as Tables 22-27)"
    return _per_category(
        ctx,
        dataset,
        column,
        categories,
        key,
        title,
        compare,
        lambda category, name: ctx.paper.kind(kind, metric, category, name),
    )


def _setting_labels(setting: Setting, number: str) -> list[Text]:
    return [
        number,
        repr(setting.lambda_l),
        "-" if setting.lambda_g is None else repr(setting.lambda_g),
        "✓" if setting.loss_lg else "-",
        "✓" if setting.loss_pg == "l2" else "-",
        "✓" if setting.loss_pg == "attention" else "-",
    ]


STUDY_KEYS = ("backbone.name", "backbone.weights", *(f"model.{k}" for k in ULSAD_KEYS))


def _study_note(study: Study, describe: Any) -> list[str]:
    """Where a study's rows come from, and what it keeps fixed (from the records' configs)."""
    fixed = ", ".join(f"{key}={study.context[key]}" for key in STUDY_KEYS if key in study.context)
    notes = [f"ULSAD on {dataset_label(study.dataset)}, all other config values equal; fixed: {fixed}."]
    for arm in study.arms:
        source = f"{describe(arm)}: variant {arm.variant or '(none)'} ({len(arm.frame)} records)"
        if arm.others:
            source += f"; not shown, same setting: {', '.join(arm.others)}"
        notes.append(source + ".")
    return notes


def table3(ctx: Context, dataset: str, compare: bool = False) -> Table | None:
    """Table 3: ULSAD's ablation settings (rows), dataset means of I-AUROC | P-AUROC | P-AUPRO."""
    study = ablation_study(ctx.ok, dataset)
    if study is None or (compare and dataset != "mvtec_loco"):
        return None
    audit = Audit(ctx.results, ctx.spread)
    paper_rows = {setting: row for row, setting in ctx.paper.table3_rows()}
    expected = ctx.expected(dataset)

    def number(setting: Setting) -> str:
        row = paper_rows.get(setting.key())
        return str(row) if row else "–"

    arms = sorted(study.arms, key=lambda a: (int(number(a.value)) if number(a.value) != "–" else 99, a.value.key()))
    study.arms = arms
    slot = Slot("mean", ABLATION_METRICS_LABEL, METRICS)
    series: list[Series] = []
    measured_keys = {arm.value.key() for arm in arms}
    paper_lookup = (
        (lambda key: lambda s: [ctx.paper.ablation(key, m) for m in METRICS]) if dataset == "mvtec_loco" else None
    )
    for arm in arms:
        scope = _arm_scope(dataset, arm)
        where = f"row {number(arm.value)} ({arm.value.key()})"

        def measure(s: Slot, frame: pd.DataFrame = arm.frame, scope: dict = scope, where: str = where) -> list[Value]:
            return [audit.measure(frame, m, where, scope, expected) for m in METRICS]

        series.append(
            Series(
                _setting_labels(arm.value, number(arm.value)),
                measure,
                paper_lookup(arm.value.key()) if paper_lookup else None,
            )
        )
    if compare and paper_lookup:
        for row, key in ctx.paper.table3_rows():
            if key not in measured_keys:
                series.append(Series(_setting_labels(Setting.parse(key), str(row)), None, paper_lookup(key)))
        series.sort(key=lambda s: int(s.labels[0]) if str(s.labels[0]).isdigit() else 99)
    table = build_grid(
        f"table03_ablation_{dataset}" + ("_vs_paper" if compare else ""),
        f"Table 3: Ablation of ULSAD's components on {dataset_label(dataset)} (dataset means, %)"
        + (" vs the paper" if compare else ""),
        series,
        [slot],
        series_as="rows",
        corner=[*TABLE3_CORNER],
        compare=compare,
    )
    audit.extra_notes += _study_note(study, lambda arm: f"row {number(arm.value)}")
    audit.extra_notes.append(
        "#: the paper's Table 3 row with the same setting ('–': not in Table 3; the paper's number, if any, "
        "from Table 28 or 29). λl, λg: model.lambda_l, lambda_g ('-': local branch only, branch=local); "
        "L_lg: model.loss_lg; L^d_pg: model.loss_pg=l2; L_pg: model.loss_pg=attention."
    )
    if any(arm.value.branch not in ("both", "local") for arm in arms):
        audit.extra_notes.append("Rows with model.branch=global score with the global branch only.")
    return audit.finish(table, None if compare else "metric (column)")


def table30(ctx: Context, dataset: str, compare: bool = False) -> Table | None:
    """Table 30: ULSAD per backbone, categories (rows) x backbones (columns), I | P | AUPRO."""
    study = backbone_study(ctx.ok, dataset)
    if study is None or (compare and dataset != "mvtec_loco"):
        return None
    audit = Audit(ctx.results, ctx.spread)
    categories = ctx.expected(dataset)
    slots = [Slot(c, c, METRICS) for c in categories] + [Slot("mean", "Mean", METRICS, rule=True)]
    arms = {arm.value: arm for arm in study.arms}
    order = backbone_order(
        set(arms) | ({"resnet50", "resnet152", "wide_resnet50_2", "wide_resnet101_2"} if compare else set())
    )
    series = []
    for backbone in order:
        paper = (
            (lambda s, b=backbone: [ctx.paper.backbone(b, m, s.key) for m in METRICS])
            if dataset == "mvtec_loco"
            else None
        )
        arm = arms.get(backbone)
        if arm is None:
            series.append(Series([backbone_label(backbone)], None, paper))
            continue
        scope = _arm_scope(dataset, arm)

        def measure(s: Slot, arm: Any = arm, scope: dict = scope) -> list[Value]:
            label = backbone_label(arm.value)
            if s.key == "mean":
                return [audit.measure(arm.frame, m, f"{label} / Mean", scope, categories) for m in METRICS]
            frame = arm.frame[arm.frame["category"] == s.key]
            return [audit.measure(frame, m, f"{label} / {s.key}", {**scope, "category": s.key}) for m in METRICS]

        series.append(Series([backbone_label(backbone)], measure, paper))
    table = build_grid(
        f"table30_backbones_{dataset}" + ("_vs_paper" if compare else ""),
        f"Table 30: ULSAD per backbone on {dataset_label(dataset)}, I-AUROC | P-AUROC | P-AUPRO (%)"
        + (" vs the paper" if compare else ""),
        series,
        slots,
        series_as="columns",
        corner=["Category"],
        compare=compare,
    )
    audit.extra_notes += _study_note(study, lambda arm: backbone_label(arm.value))
    return audit.finish(table, None if compare else "category and metric (row)")


def all_tables(ctx: Context, compare: bool = False) -> list[Table]:
    """Every table the records allow, in the paper's order (``compare``: the vs-paper versions)."""
    tables: list[Table | None] = [table1(ctx, compare), table2(ctx, compare)]
    ulsad_datasets = dataset_order(set(ctx.ok.loc[ctx.ok["model"] == "ulsad", "dataset"]))
    tables += [table3(ctx, d, compare) for d in ulsad_datasets]
    tables += [table4(ctx, d, compare) for d in ctx.datasets()]
    tables += [extended(ctx, d, metric, compare) for d in ctx.datasets() for metric in dataset_metrics(ctx, d, METRICS)]
    tables += [kinds(ctx, d, kind, metric, compare) for d in ctx.datasets() for kind in KINDS for metric in METRICS]
    tables += [table30(ctx, d, compare) for d in ulsad_datasets]
    if not compare:  # tables the paper does not have
        tables += [all_metrics(ctx, d) for d in ctx.datasets()]
        tables += [spro_table(ctx, d) for d in ctx.datasets()]
        tables += protocol_gap_tables(ctx.main)
    return [t for t in tables if t is not None]


def _arm_scope(dataset: str, arm: Any) -> dict[str, Any]:
    """The records of a ULSAD study arm, of every status (for the audit's failure and conflict notes)."""
    tags = sorted(set(arm.frame["protocol"])) if "protocol" in arm.frame else []
    protocol = tags[0] if tags else "clean"  # studies compare runs of one protocol
    return {
        "dataset": dataset,
        "model": "ulsad",
        "variant": arm.variant,
        "backbone": arm.backbone,
        "protocol": protocol,
    }

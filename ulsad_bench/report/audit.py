"""What a table's numbers stand on: seeds, missing cells and why, failures, conflicts, weights.

An :class:`Audit` measures every cell of one table (:meth:`Audit.measure`) and remembers what
it saw; :meth:`Audit.finish` then writes the table's warnings (random-init backbones, validation
on test images, fewer than five seeds, missing cells, conflicts) and notes (conventions, which
cells are missing and why, failed records, conflicts, weights).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from .aggregate import FULL_SEEDS, category_stat, dataset_stat, per_seed
from .load import EFFICIENCY_COLUMNS, KIND_COLUMNS, Results
from .statistics import ALPHA, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, LEVEL, bootstrap_interval, t_interval
from .table import CPU_MARK, PARTIAL_MARK, SEED_MARK, SETTING_MARK, TIE_MARK, Table, Value, value_of

RANDOM_WARNING = "RANDOM-INIT BACKBONE: not comparable to the paper"
TEST_VAL_WARNING = "VALIDATION ON TEST IMAGES: calibration/stopping saw the test set"
TEST_SELECTED_MARK = "TS"
PROTOCOL_WARNING = (
    "TEST-SET SELECTION / CALIBRATION (the authors' protocol or a part of it) in rows marked [...]: "
    "not comparable to clean numbers, see the notes"
)
DIRTY_WARNING = "RECORDS FROM UNCOMMITTED CODE (git tree with changes): see the notes"
SUBSTITUTE_WARNING = (
    "NOT THE PAPER'S SETTING (a substitute: EfficientAD's teacher or penalty, DRÆM's anomaly source): see the notes"
)
OFF_PAPER_WARNING = f"SETTINGS OTHER THAN THE PAPER'S in cells marked {SETTING_MARK} (e.g. shorter training): see notes"
UNVERIFIED_WARNING = "UNVERIFIED BACKBONE WEIGHTS (sha256 not the published file's): see the notes"
CONVENTIONS = (
    "Values in percent (throughput in images/s, memory in GB of 2^30 bytes): mean ± sample standard deviation "
    "(ddof = 1) over seeds; no ± for a single seed.",
    "Dataset means (Mean rows; Tables 1-4): per seed the mean over categories, then mean ± std over the seeds "
    "present in every category.",
)
RANK_NOTE = (
    "Best in bold, second best underlined, per {per} ({direction}); compared as printed: ties share a mark and "
    "the next distinct value is second."
)
LIST_LIMIT = 40
#: ``--spread``: ``std`` (mean ± sample std over seeds, the paper's style) or ``ci`` (95% intervals)
SPREADS = ("std", "ci")
CI_NOTE = (
    f"[low, high]: {LEVEL:.0%} intervals (--spread ci) instead of ± std: per category the Student-t interval of "
    "the mean over seeds; for a dataset mean a two-level percentile bootstrap (categories drawn with replacement, "
    f"then each drawn category's seeds; {BOOTSTRAP_RESAMPLES} resamples, numpy generator seed {BOOTSTRAP_SEED}), "
    "which counts the spread between categories as well as between seeds."
)
TIE_NOTE = (
    f"{TIE_MARK}: not significantly different from the best method on that dataset (the best included): "
    f"Wilcoxon signed-rank test over the categories' seed means, Holm-corrected over the comparisons with the best, "
    f"α = {ALPHA:g}; methods with too few seeds (--min-seeds) or missing categories, and runs of the authors' "
    "protocol, are not tested (statistics tables: tests_<dataset>_<metric>)."
)


def _short_list(items: Sequence[str]) -> str:
    shown = list(dict.fromkeys(items))
    more = f"; … and {len(shown) - LIST_LIMIT} more" if len(shown) > LIST_LIMIT else ""
    return "; ".join(shown[:LIST_LIMIT]) + more


class Audit:
    """Measures a table's cells and collects its warnings and notes."""

    def __init__(self, results: Results, spread: str = "std") -> None:
        if spread not in SPREADS:
            raise ValueError(f"--spread {spread!r}: expected one of {', '.join(SPREADS)}")
        self.results = results
        self.spread = spread
        self.tie_marked = False
        self.untested: dict[str, str] = {}
        self.random: dict[str, None] = {}
        self.val_test: dict[str, str] = {}
        self.protocols: dict[str, None] = {}
        self.few_seeds = False
        self.partial: dict[str, str] = {}
        self.dropped: dict[str, str] = {}
        self.missing: dict[str, list[str]] = {}
        self.failed: dict[str, str] = {}
        self.conflicts: dict[str, str] = {}
        self.weights: dict[str, None] = {}
        self.cpu_memory = False
        self.dirty: dict[str, None] = {}
        self.crops: dict[str, str] = {}
        self.substitutes: dict[str, str] = {}
        self.off_paper: dict[str, str] = {}
        self.unverified: dict[str, None] = {}
        self.extra_warnings: list[str] = []
        self.extra_notes: list[str] = []

    def measure(
        self,
        frame: pd.DataFrame,
        column: str,
        where: str,
        scope: dict[str, Any],
        expected: Sequence[str] | None = None,
        decimals: int = 2,
    ) -> Value:
        """One cell: a single category's records (``expected`` None) or a dataset mean over
        ``expected`` categories. ``scope`` selects the cell's records of every status."""
        self.observe(frame, where, scope)
        stat = category_stat(frame, column) if expected is None else dataset_stat(frame, column, expected)
        if stat is None:
            self.missing.setdefault(self.reason(scope, column, frame), []).append(where)
            return Value(None)
        value = value_of(stat, decimals)
        if self.spread == "ci":
            value.interval = _interval(frame, column, expected)
        if "protocol" in frame and (frame["protocol"] != "clean").any():
            value.marks.append(TEST_SELECTED_MARK)  # never ranked against clean numbers
            value.ranked = False
        self.few_seeds |= stat.n < FULL_SEEDS
        if stat.missing_categories:
            self.partial[where] = (
                f"{where}: {stat.categories} of {stat.categories + len(stat.missing_categories)} categories "
                f"(missing: {', '.join(stat.missing_categories)})"
            )
        if stat.dropped_seeds:
            seeds = ", ".join(str(s) for s in stat.dropped_seeds)
            self.dropped[where] = f"{where}: seed(s) {seeds} (not run in every category)"
        if "off_paper" in frame and (frame["off_paper"] != "").any():
            value.marks.append(SETTING_MARK)
        if column == "peak_memory_gb" and frame["memory_measure"].str.startswith("cpu").any():
            value.marks.append(CPU_MARK)
            self.cpu_memory = True
        return value

    def mark_tie(self, value: Value, tied: frozenset[Any] | None, method: Any, dataset: str) -> None:
        """Mark ``value`` (``method``'s on ``dataset``) :data:`TIE_MARK` when it is in the group of
        methods not significantly different from the best (``tied``, more than the best alone);
        ``tied`` None: no test was possible there, which the notes say."""
        if tied is None:
            self.untested[dataset] = dataset
        elif len(tied) > 1 and method in tied and value.mean is not None:
            value.marks.append(TIE_MARK)
            self.tie_marked = True

    def observe(self, frame: pd.DataFrame, where: str, scope: dict[str, Any]) -> None:
        """Note the weights, validation source, failures and conflicts behind a cell."""
        head = where.split(" / ")[0]
        columns = ("weights_policy", "weights_sha256", "val_on_test", "val_source")
        for kind, sha, on_test, source in set(zip(*(frame[c] for c in columns), strict=True)):
            self.weights[f"{kind} (sha256 {sha[:12]})" if sha else str(kind)] = None
            if kind == "random":
                self.random[head] = None
            if on_test:
                self.val_test[head] = str(source)
        if "protocol" in frame:
            for tag in set(frame["protocol"]) - {"clean"}:
                self.protocols[f"{head}: {tag}"] = None
        if "dirty" in frame and frame["dirty"].any():
            self.dirty[where] = None
        if "center_crop" in frame:
            for crop, size in set(zip(frame["center_crop"], frame["image_size"], strict=True)):
                if crop is not None and crop == crop:  # not None / NaN
                    self.crops[head] = f"{head} ({int(crop)} of {size} px)"
        if "substitute" in frame:
            for text in set(frame["substitute"]) - {""}:
                self.substitutes[head] = f"{head}: {text}"
        if "off_paper" in frame:
            for text in set(frame["off_paper"]) - {""}:
                self.off_paper[f"{head}: {text}"] = text
        if "weights_unverified" in frame and frame["weights_unverified"].any():
            self.unverified[head] = None
        every = self.results.scope(**scope)
        for path, status, seed, error in zip(
            every["path"], every["status"], every["seed"], every["error"], strict=True
        ):
            if status != "ok":
                self.failed[path] = f"{where} seed {seed}: {error}"
        for conflict in self.results.conflicts:
            if all(conflict.get(k) == v for k, v in scope.items()):
                self.conflicts[conflict["paths"][0]] = (
                    f"{conflict['model']} / {conflict['dataset']} / {conflict['category']}"
                    f"{' / ' + conflict['variant'] if conflict['variant'] else ''} / {conflict['backbone']} "
                    f"seeds {conflict['seeds']}: {conflict['detail']}"
                )

    def reason(self, scope: dict[str, Any], column: str, frame: pd.DataFrame) -> str:
        """Why a cell is empty."""
        every = self.results.scope(**scope)
        if every.empty:
            return "no record"
        ok = every[every["status"] == "ok"]
        if ok.empty:
            return "every record failed (see Failed records)"
        if (ok["excluded"] != "").all():
            return "conflicting records left out (see Conflicts)"
        if column in EFFICIENCY_COLUMNS:
            return "no efficiency measurement in the records"
        if column in KIND_COLUMNS:
            return "no per-kind metrics in the records"
        if not frame.dropna(subset=[column]).empty:
            return "no seed present in every category"
        return f"no {column} in the records"

    def finish(self, table: Table, per: str | None, direction: str = "higher is better") -> Table:
        """Write the collected warnings and notes into ``table`` (``per`` None: no best marks)."""
        table.warnings = self._warnings() + self.extra_warnings
        table.notes = self._notes(per, direction) + self.extra_notes
        return table

    def _warnings(self) -> list[str]:
        """The table's warnings (its caption), from what was collected."""
        warnings = []
        if self.random:
            warnings.append(RANDOM_WARNING)
        if self.protocols:
            warnings.append(PROTOCOL_WARNING)
        if self.val_test:
            warnings.append(TEST_VAL_WARNING)
        if self.few_seeds:
            warnings.append(f"FEWER THAN {FULL_SEEDS} SEEDS in cells marked {SEED_MARK}n")
        if self.missing:
            warnings.append("MISSING CELLS (—): see the notes")
        if self.conflicts:
            warnings.append("CONFLICTING RECORDS LEFT OUT: see the notes")
        if self.dirty:
            warnings.append(DIRTY_WARNING)
        if self.substitutes:
            warnings.append(SUBSTITUTE_WARNING)
        if self.off_paper:
            warnings.append(OFF_PAPER_WARNING)
        if self.unverified:
            warnings.append(UNVERIFIED_WARNING)
        return warnings

    def _notes(self, per: str | None, direction: str) -> list[str]:
        """The table's notes, from what was collected."""
        notes = list(CONVENTIONS)
        if self.spread == "ci":
            notes.append(CI_NOTE)
        if per:
            notes.append(RANK_NOTE.format(per=per, direction=direction))
        if self.tie_marked:
            notes.append(TIE_NOTE)
        if self.untested:
            notes.append(
                f"No significance test on {', '.join(self.untested)} (too few categories or tested methods, see "
                "the statistics tables): best and second best there are the printed values only, not evidence."
            )
        if self.few_seeds:
            notes.append(f"{SEED_MARK}n: mean over n < {FULL_SEEDS} seeds (the paper: 5 seeds).")
        if self.partial:
            partial = _short_list(list(self.partial.values()))
            notes.append(f"{PARTIAL_MARK}: mean over part of the categories (not ranked): {partial}.")
        if self.dropped:
            notes.append(f"Seeds left out of a mean: {_short_list(list(self.dropped.values()))}.")
        if self.cpu_memory:
            notes.append(
                f"{CPU_MARK}: measured on CPU (model state, input batch and peak live tensors of inference; "
                "older records: the process's peak resident memory), not GPU memory: not comparable to the "
                "paper's GPU memory."
            )
        if self.random:
            notes.append(f"Random-init backbone (not ImageNet): {', '.join(self.random)}.")
        if self.protocols:
            notes.append(
                "Evaluated with the ULSAD authors' protocol or parts of it (protocol.select_on_test: the epoch with "
                "the best test image AUROC; drop_last_test: the last incomplete test batch of the path-sorted test "
                "set never scored; quantiles_from_test: calibrated on normal test images), never averaged with clean "
                f"runs: {', '.join(self.protocols)}. {TEST_SELECTED_MARK}: such a cell (not ranked). Use "
                "protocol=clean for new results (README, 'Protocols')."
            )
        if self.val_test:
            notes.append(
                "Validation on test images: " + "; ".join(f"{k} ({v})" for k, v in self.val_test.items()) + "."
            )
        for reason, wheres in self.missing.items():
            notes.append(f"Missing (—), {reason}: {_short_list(wheres)}.")
        if self.failed:
            notes.append(f"Failed records (not averaged in): {_short_list(list(self.failed.values()))}.")
        if self.conflicts:
            notes.append(f"Conflicts (left out): {_short_list(list(self.conflicts.values()))}.")
        if self.weights:
            notes.append(f"Backbone weights: {', '.join(self.weights)}.")
        if self.crops:
            notes.append(
                "Evaluated on centre crops (images and masks, after the resize; anomalib 0.7's PatchCore setting): "
                + "; ".join(self.crops.values())
                + "."
            )
        if self.substitutes:
            notes.append(
                "Not the paper's setting, a substitute asked for (EfficientAD: a teacher distilled on the training "
                "images instead of anomalib's pretrained one, or no ImageNette penalty; DRÆM: anomalies synthesised "
                f"from generated textures instead of DTD): {'; '.join(self.substitutes.values())}."
            )
        if self.off_paper:
            notes.append(
                f"{SETTING_MARK}: run with settings other than the paper's (conf/model/<name>.yaml holds the paper's): "
                f"{_short_list(list(self.off_paper))}."
            )
        if self.unverified:
            notes.append(
                "Backbone weights whose sha256 is not the published file's (backbone.verify=false): "
                f"{', '.join(self.unverified)}."
            )
        if self.dirty:
            notes.append(
                "Made from a git tree with uncommitted changes (the commit in the record does not say which code "
                f"ran; the records are listed in the index): {_short_list(list(self.dirty))}."
            )
        return notes


def _interval(frame: pd.DataFrame, column: str, expected: Sequence[str] | None) -> tuple[float, float] | None:
    """The ``--spread ci`` interval of a cell: Student-t over seeds (one category, ``expected`` None)
    or the two-level bootstrap over categories and seeds (a dataset mean); None without one."""
    seeds: dict[str, list[float]] = {}
    for _, categories in sorted(per_seed(frame, column).items()):
        for category, value in categories.items():
            seeds.setdefault(category, []).append(value)
    if expected is None:
        found = t_interval([v for values in seeds.values() for v in values])
    else:
        found = bootstrap_interval(seeds) if seeds else None
    if found is None or found.low is None or found.high is None:
        return None
    return (found.low, found.high)

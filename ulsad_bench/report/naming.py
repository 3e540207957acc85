"""Names and orders as the paper prints them: methods, datasets, metrics, backbones, table numbers.

Method names are the paper's short column names (Tables 4, 7-30); Tables 1-2 print two of
them in full (``LONG_NAMES``). The CSV of published numbers (``paper_results.csv``) uses the
short names.
"""

from __future__ import annotations

from ..metrics import SEG_F1, SPRO_LIMITS, spro_key

# model (config ``model.name``) -> the paper's method name
MODEL_METHOD = {
    "cflow": "CFLOW",
    "draem": "DRÆM",
    "fastflow": "FastFlow",
    "padim": "PaDiM",
    "patchcore": "PatchCore",
    "reverse_distillation": "RD",
    "efficientad": "EffAD",
    "dfr": "DFR",
    "ulsad": "ULSAD",
}
# column order of Tables 4 and 7-27
PAPER_METHODS = ("CFLOW", "DRÆM", "FastFlow", "PaDiM", "PatchCore", "RD", "DFR", "EffAD", "ULSAD")
# row order of Tables 1 and 2
TABLE1_ORDER = ("PatchCore", "CFLOW", "DRÆM", "EffAD", "FastFlow", "PaDiM", "RD", "DFR", "ULSAD")
LONG_NAMES = {"EffAD": "EfficientAD", "RD": "Reverse Distillation"}

# column order of Tables 1 and 2; any other dataset (e.g. synthetic) follows, sorted
PAPER_DATASETS = ("btad", "mpdd", "mvtec", "mvtec_loco", "visa")
DATASET_LABEL = {
    "btad": "BTAD",
    "mpdd": "MPDD",
    "mvtec": "MVTec",
    "mvtec_loco": "MVTec-LOCO",
    "visa": "VisA",
    "mvtec_ad2": "MVTec AD 2",
    "synthetic": "Synthetic",
}

METRICS = ("image_auroc", "pixel_auroc", "aupro")  # the paper's three
# every metric a record carries (multi-method benchmarks' set, e.g. ADer's), in their column order
ALL_METRICS = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro")
SPRO_METRICS = tuple(spro_key(limit) for limit in SPRO_LIMITS)  # MVTec LOCO's AUC-sPRO record keys
METRIC_LABEL = {
    "image_auroc": "I-AUROC",
    "image_ap": "I-AP",
    "image_f1_max": "I-F1max",
    "pixel_auroc": "P-AUROC",
    "pixel_ap": "P-AP",
    "pixel_f1_max": "P-F1max",
    "aupro": "AUPRO",
    SEG_F1: "SegF1",
    "throughput": "Throughput (img/s)",
    "peak_memory_gb": "Peak memory (GB)",
    "throughput_batch1": "Throughput at batch 1 (img/s)",
    "latency_ms": "Latency at batch 1 (ms)",
}
METRIC_TITLE = {"image_auroc": "Image AUROC", "pixel_auroc": "Pixel AUROC", "aupro": "AUPRO", SEG_F1: "SegF1"}
#: the record keys of AU-PRO at FPR limits other than ``fpr_limit`` (``metrics.pro_limits``): ``aupro_<limit>``
PRO_PREFIX = "aupro_"
#: a dataset's own benchmark's metrics, which its tables lead with. MVTec AD 2 (Heckler-Kram et al. 2025):
#: AU-PRO up to FPR 0.05, the dataset paper's headline ("below 60% average AU-PRO"), then 0.3, and SegF1,
#: the VAND 4.0 challenge's ranking metric (ulsad_bench/metrics.py, conf/dataset/mvtec_ad2.yaml)
OFFICIAL_METRICS = {"mvtec_ad2": (f"{PRO_PREFIX}0.05", "aupro", SEG_F1)}
#: the official metrics that are not among :data:`ALL_METRICS` (the statistics test them too)
OFFICIAL_EXTRA = tuple(dict.fromkeys(m for ms in OFFICIAL_METRICS.values() for m in ms if m not in ALL_METRICS))
LOWER_IS_BETTER = frozenset({"peak_memory_gb", "latency_ms"})
KINDS = ("structural", "logical")  # the order of Tables 22-27

# (dataset, metric) -> the paper's extended table (Tables 7-21)
EXTENDED_TABLES = {
    (dataset, metric): first + offset
    for dataset, first in (("mvtec", 7), ("mvtec_loco", 10), ("mpdd", 13), ("btad", 16), ("visa", 19))
    for offset, metric in enumerate(METRICS)
}
# (kind, metric) -> the paper's MVTec LOCO per-kind table (Tables 22-27)
KIND_TABLES = {
    (kind, metric): first + offset
    for kind, first in (("structural", 22), ("logical", 25))
    for offset, metric in enumerate(METRICS)
}

# Table 30 / Figure 7 column order; the paper prints "Wide-ResNet100-2" for wide_resnet101_2
BACKBONE_ORDER = ("resnet18", "resnet50", "resnet152", "wide_resnet50_2", "wide_resnet101_2", "vgg19")
BACKBONE_LABEL = {
    "resnet18": "ResNet18",
    "resnet50": "ResNet50",
    "resnet152": "ResNet152",
    "wide_resnet50_2": "Wide-ResNet50-2",
    "wide_resnet101_2": "Wide-ResNet101-2",
    "vgg19": "VGG19",
}
PAPER_BACKBONE = "wide_resnet50_2"


#: test folders' names as a reader says them (MVTec AD, LOCO, VisA, BTAD)
DEFECT_LABEL = {
    "good": "normal",
    "ok": "normal",
    "bad": "anomalous",
    "ko": "anomalous",
    "logical_anomalies": "logical anomaly",
    "structural_anomalies": "structural anomaly",
}


def defect_label(defect: str) -> str:
    """A test folder's name for a figure: ``logical_anomalies`` -> ``logical anomaly``, ``good``
    -> ``normal``, ``broken_large`` -> ``broken large``."""
    return DEFECT_LABEL.get(defect, defect.replace("_", " "))


def method_name(model: str) -> str:
    """The paper's name for a model (its config name, capitalised, when the paper has none)."""
    return MODEL_METHOD.get(model, model.capitalize())


def long_method_name(method: str) -> str:
    """The method's name as Tables 1-2 print it."""
    return LONG_NAMES.get(method, method)


def pro_limit_of(metric: str) -> float | None:
    """The FPR limit of an ``aupro_<limit>`` key (None for any other metric)."""
    if not metric.startswith(PRO_PREFIX):
        return None
    try:
        return float(metric[len(PRO_PREFIX) :])
    except ValueError:
        return None


def metric_label(metric: str, limits: bool = False) -> str:
    """A metric as a column prints it: ``I-AUROC``, ``SegF1``, ``AUPRO@0.05`` for ``aupro_0.05``;
    ``limits``: AU-PRO at several limits is shown, so ``aupro`` prints its limit too (``AUPRO@0.3``,
    ``fpr_limit``'s default)."""
    limit = pro_limit_of(metric)
    if limit is not None:
        return f"AUPRO@{limit:g}"
    if metric == "aupro" and limits:
        return "AUPRO@0.3"
    return METRIC_LABEL.get(metric, metric)


def metric_title(metric: str) -> str:
    """A metric as a title names it: ``Image AUROC``, ``AUPRO up to FPR 0.05``."""
    limit = pro_limit_of(metric)
    if limit is not None:
        return f"AUPRO up to FPR {limit:g}"
    return METRIC_TITLE.get(metric, METRIC_LABEL.get(metric, metric))


def dataset_label(dataset: str) -> str:
    return DATASET_LABEL.get(dataset, dataset)


def backbone_label(backbone: str) -> str:
    return BACKBONE_LABEL.get(backbone, backbone)


def order_key(order: tuple[str, ...], name: str) -> tuple[int, str]:
    """Sort key: position in ``order``, unknown names after, alphabetically."""
    return (order.index(name), "") if name in order else (len(order), name)


def dataset_order(datasets: list[str] | set[str]) -> list[str]:
    return sorted(set(datasets), key=lambda d: order_key(PAPER_DATASETS, d))


def backbone_order(backbones: list[str] | set[str]) -> list[str]:
    return sorted(set(backbones), key=lambda b: order_key(BACKBONE_ORDER, b))


def protocol_label(tag: str) -> str:
    """How a method's label says it was evaluated with the authors' protocol (or a part of it)."""
    return "[AUTHORS' PROTOCOL: test-selected]" if tag == "authors" else f"[TEST-SELECTED: {tag}]"

"""``make bench``: inference throughput and peak memory of every model side by side (Table 4).

All models run in one process, one after the other, on the same device, images and batch
size, through the one protocol of :mod:`ulsad_bench.profiling`. The paper's setting is the
default: 256 x 256 images, Wide-ResNet-50-2, batches of 32. Each model is fitted first on a
synthetic training set of ``--train-images`` images (default 354, the mean training-set size
of an MVTec LOCO category: 1772 / 5), so that PatchCore's memory bank has a realistic size
(10 % coreset of 354 x 32 x 32 patches = 36,250 entries). Training length does not change
inference cost, so iterative models train only briefly here (stated in the output).
Backbone weights default to random initialisation: speed and memory do not depend on the
weight values (``--weights imagenet`` uses the cached ImageNet file instead).

It also times one ULSAD training epoch with the frozen features read from the cache against
one that runs the backbone on every batch, and writes ``reports/efficiency.json`` and
``reports/efficiency.md``.
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir

from .environment import describe_device, resolve_device, seed_everything
from .models.backbone import resolve_weights
from .profiling import profile_inference, synchronize
from .records import write_json_atomic
from .runner import build_model, crop_for_model, load_data, make_context

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
# Short training for the iterative models: inference cost does not depend on it (nor on where
# EfficientAD's teacher weights come from: the same network either way).
SHORT_TRAINING = {
    "ulsad": ["model.epochs=1"],
    "dfr": ["model.epochs=1"],
    "efficientad": ["model.steps=20", "model.distillation.steps=20", "model.teacher=distilled", "model.penalty=off"],
}
GOALS = "ULSAD throughput >= PatchCore and >= 2x DFR; ULSAD memory <= 40% of PatchCore; cached epoch >= 1.3x faster"


def compose_bench_config(model: str, args: argparse.Namespace) -> Any:
    overrides = [
        f"model={model}",
        "dataset=synthetic",
        "dataset.category=pinbox",
        f"dataset.image_size={args.image_size}",
        f"dataset.synthetic.resolution={args.image_size}",
        f"dataset.synthetic.n_train={args.train_images}",
        "dataset.synthetic.n_validation=8",
        "dataset.synthetic.n_test_good=8",
        "dataset.synthetic.n_per_defect=4",
        f"backbone={args.backbone}",
        f"backbone.weights={args.weights}",
        f"device={args.device}",
        f"precision={args.precision}",
        f"cache_dir={args.cache_dir}",
        f"progress={str(args.progress).lower()}",
        *SHORT_TRAINING.get(model, []),
        *[
            o.split(":", 1)[1] if ":" in o.split("=", 1)[0] else o
            for o in args.override
            if ":" not in o.split("=", 1)[0] or o.split(":", 1)[0] == model
        ],
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def _release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def bench_model(name: str, args: argparse.Namespace, epoch_timing: bool) -> dict[str, Any]:
    cfg = compose_bench_config(name, args)
    seed_everything(0)
    device = resolve_device(str(cfg.device))
    weights = resolve_weights(
        str(cfg.backbone.name), str(cfg.backbone.weights), 0, bool(cfg.backbone.get("verify", True))
    )
    _, train, val, test = load_data(cfg)
    train, val, test = crop_for_model(cfg, train, val, test)  # PatchCore at its 224-of-256 crop, as it runs
    model = build_model(cfg.model)
    model.setup(make_context(cfg, device, weights))
    feature_s = None
    if epoch_timing and name == "ulsad":  # features computed (or read from the disk cache) apart from the fit
        start = time.perf_counter()
        model.features(train)
        feature_s = time.perf_counter() - start
    start = time.perf_counter()
    model.fit(train, val)
    fit_s = time.perf_counter() - start
    result = profile_inference(
        model,
        test.images,
        device,
        batch_size=args.batch_size,
        warmup_batches=args.warmup,
        timed_batches=args.timed,
        precision=args.precision,
    )
    result["fit_s_short_training"] = round(fit_s, 2)
    result["train_images"] = len(train)
    if epoch_timing and name == "ulsad":
        features = model.features(train)  # cached by fit
        if device.type == "cuda":
            features = features.to(device)
        start = time.perf_counter()
        targets = model.attention_targets(features) if model.cache_attention_target else None
        synchronize(device)
        result["attention_targets_s_once"] = round(time.perf_counter() - start, 3)
        timings = {}
        for label, feats, targ in (("cached", features, targets), ("uncached", None, None)):
            start = time.perf_counter()
            model._train(train, feats, epochs=1, targets=targ)
            synchronize(device)
            timings[label] = time.perf_counter() - start
        result["feature_extraction_s"] = round(feature_s or 0.0, 3)
        result["train_epoch_s_cached"] = round(timings["cached"], 3)
        result["train_epoch_s_uncached"] = round(timings["uncached"], 3)
        del features, targets
    del model
    _release()
    return result


def render_markdown(report: dict[str, Any]) -> str:
    models = report["models"]
    reference = models.get("ulsad")
    lines = [
        "# Efficiency (Table 4 protocol)",
        "",
        f"Device: {report['device']}. Images {report['image_size']} x {report['image_size']}, batch "
        f"{report['batch_size']}, {report['warmup_batches']} warm-up + {report['timed_batches']} timed batches, "
        f"precision {report['precision']}, backbone {report['backbone']} ({report['weights']} weights), "
        f"memory banks from {report['train_images']} training images. Each model runs as in its own job: "
        "PatchCore last, as it sets glibc's mmap threshold for its process (field malloc_mmap_threshold).",
        "",
        "| Model | Throughput (img/s) | vs ULSAD | Peak memory (MB) | vs ULSAD | Memory measured as |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, result in models.items():
        if "error" in result:
            error = " ".join(str(result["error"]).split()).replace("|", "/")
            lines.append(f"| {name} | failed: {error} | | | | |")
            continue
        t_ratio = f"{result['throughput_img_s'] / reference['throughput_img_s']:.2f}x" if reference else "—"
        m_ratio = f"{result['peak_memory_mb'] / reference['peak_memory_mb']:.2f}x" if reference else "—"
        lines.append(
            f"| {name} | {result['throughput_img_s']:.2f} | {t_ratio} | {result['peak_memory_mb']:.0f} | {m_ratio} "
            f"| {result['memory_kind']} |"
        )
    if "ulsad_train_epoch_s_cached" in report:
        lines += [
            "",
            f"ULSAD training epoch: {report['ulsad_train_epoch_s_cached']:.2f} s with cached frozen features, "
            f"{report['ulsad_train_epoch_s_uncached']:.2f} s recomputing the backbone "
            f"({report['ulsad_epoch_speedup']:.2f}x). Computed once per training set and not in the cached "
            f"epoch: the features ({report['ulsad_feature_extraction_s']:.1f} s, computed or read from the "
            f"disk cache) and Eq. 3's "
            f"attention targets ({report['ulsad_attention_targets_s_once']:.1f} s).",
        ]
    lines += ["", f"Goals: {GOALS}.", ""]
    lines += [f"- {goal}: {'met' if ok else 'NOT met'}" for goal, ok in report.get("goals", {}).items()]
    return "\n".join(lines) + "\n"


def check_goals(report: dict[str, Any]) -> dict[str, bool]:
    models = report["models"]
    ok = {k: v for k, v in models.items() if "error" not in v}
    goals: dict[str, bool] = {}
    if "ulsad" in ok and "patchcore" in ok:
        goals["throughput >= PatchCore"] = ok["ulsad"]["throughput_img_s"] >= ok["patchcore"]["throughput_img_s"]
        goals["memory <= 40% of PatchCore"] = ok["ulsad"]["peak_memory_mb"] <= 0.4 * ok["patchcore"]["peak_memory_mb"]
    if "ulsad" in ok and "dfr" in ok:
        goals["throughput >= 2x DFR"] = ok["ulsad"]["throughput_img_s"] >= 2 * ok["dfr"]["throughput_img_s"]
    if "ulsad_epoch_speedup" in report:
        goals["cached epoch >= 1.3x faster"] = report["ulsad_epoch_speedup"] >= 1.3
    return goals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # PatchCore last: the glibc setting its fit applies is process-wide and slows CPU work, so
    # models after it would not be measured as in their own jobs
    parser.add_argument("--models", default="ulsad,padim,efficientad,dfr,patchcore")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--backbone", default="wide_resnet50_2")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--train-images", type=int, default=354)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--timed", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--cache-dir", default=".cache/ulsad_bench")
    parser.add_argument("--out", type=Path, default=Path("reports"))
    parser.add_argument("--progress", action="store_true")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        help="extra Hydra override, repeatable; MODEL:key=value applies to one model only",
    )
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    report: dict[str, Any] = {
        "device": describe_device(device),
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "warmup_batches": args.warmup,
        "timed_batches": args.timed,
        "precision": args.precision,
        "backbone": args.backbone,
        "weights": args.weights,
        "train_images": args.train_images,
        "models": {},
    }
    names = [m for m in args.models.split(",") if m]
    names = [m for m in names if m != "patchcore"] + [m for m in names if m == "patchcore"]
    for name in names:
        print(f"[bench] {name} ...", flush=True)
        try:
            result = bench_model(name, args, epoch_timing=True)
        except Exception as err:  # one model's failure is reported, the others still run
            result = {"error": f"{type(err).__name__}: {err}"}
            _release()
        report["models"][name] = result
        summary = result.get("error") or f"{result['throughput_img_s']:.2f} img/s, {result['peak_memory_mb']:.0f} MB"
        print(f"[bench] {name}: {summary}", flush=True)
        if name == "ulsad" and "train_epoch_s_cached" in result:
            report["ulsad_train_epoch_s_cached"] = result["train_epoch_s_cached"]
            report["ulsad_train_epoch_s_uncached"] = result["train_epoch_s_uncached"]
            report["ulsad_epoch_speedup"] = round(result["train_epoch_s_uncached"] / result["train_epoch_s_cached"], 3)
            report["ulsad_attention_targets_s_once"] = result["attention_targets_s_once"]
            report["ulsad_feature_extraction_s"] = result["feature_extraction_s"]
    report["models"] = {
        name: {
            "throughput_img_s": r.get("throughput_img_s"),
            "peak_memory_mb": r.get("peak_memory_mb"),
            "device": r.get("device"),
            "batch_size": r.get("batch_size"),
            **r,
        }
        for name, r in report["models"].items()
    }
    report["goals"] = check_goals(report)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "efficiency.json", report)
    markdown = render_markdown(report)
    (args.out / "efficiency.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``make bench``: inference throughput and peak memory of every model side by side (Table 4).

Every model is one job built by the harness's own pipeline (:func:`ulsad_bench.runner.prepare`,
as ``run.py`` builds it), composed from its preset ``experiments/bench/<model>.yaml``: the
paper's setting (``bench/table4.yaml``: 256 x 256 images, Wide-ResNet-50-2, batches of 32,
memory banks from 354 training images), fitted, then measured through the one protocol of
:mod:`ulsad_bench.profiling`. Iterative models train briefly (inference cost does not depend on
training length); weights are random by default (speed and memory do not depend on their values).

Inference is measured at batch ``profile.batch_size`` (32) and at batch 1 (single images timed
one by one: latency and img/s).

ULSAD's training is timed as two configured jobs of a few epochs each: with the frozen features
precomputed once (the default, ``model.precompute_features=true``) and recomputed on every
batch (``false``), both after the same kernel settings; the epoch times come from the fit's
record (``fit.timing.epoch_s``). The first epoch is reported apart (on CUDA it includes
``cudnn.benchmark``'s autotuning of every new shape) and the steady state is the median of the
others; from it, the time of one paper job and of the paper's whole ULSAD study on this device
are predicted. Writes ``reports/efficiency.json`` and ``reports/efficiency.md``.

Extra Hydra overrides apply to every model (``device=cuda``), or to one model with
``MODEL:key=value``. ``--precisions fp32,bf16`` (the default on CUDA; ``make bench DEVICE=cuda``)
measures every fitted model again under its bf16 precision policy
(:mod:`ulsad_bench.models.precision`) with channels-last modules on CUDA, and reports its test
image AUROC against fp32's (flagged beyond 0.5 points). On CUDA, timing runs with
``cudnn.benchmark`` on and deterministic algorithms off (recorded), since outputs are not used.
``device=cuda`` on a machine without CUDA stops before anything runs (exit 2).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .artifacts import write_json_atomic
from .config import EXPERIMENTS_DIR, compose
from .environment import describe_device, resolve_device
from .metrics import image_auroc
from .models.precision import PRECISIONS
from .profiling import profile_inference
from .runner import predict_all, prepare
from .spec import JobSpec

GOALS = "ULSAD throughput >= PatchCore and >= 2x DFR; ULSAD memory <= 40% of PatchCore; cached epoch >= 1.3x faster"
#: PatchCore last: the glibc setting its fit applies is process-wide and slows CPU work, so
#: models after it would not be measured as in their own jobs
DEFAULT_MODELS = "ulsad,padim,efficientad,dfr,patchcore"
PRESETS = EXPERIMENTS_DIR / "bench"
#: the paper's ULSAD study (Section 4.1): 200 epochs, five seeds, and the training images of each
#: dataset's published split (Section 4.1: MVTec AD 3,629, VisA 8,659 of its 1cls split, MVTec
#: LOCO 1,772, MPDD 888, BTAD 1,799) in 15 + 12 + 5 + 6 + 3 categories
PAPER_EPOCHS, PAPER_SEEDS, PAPER_CATEGORIES = 200, 5, 41
PAPER_TRAIN_IMAGES = {"mvtec": 3629, "visa": 8659, "mvtec_loco": 1772, "mpdd": 888, "btad": 1799}
#: bf16 may move the test image AUROC by less than this against fp32 (the tests' tolerance)
AUROC_TOLERANCE_POINTS = 0.5


def model_overrides(model: str, overrides: list[str]) -> list[str]:
    """The overrides for ``model``: every plain one, and ``MODEL:key=value`` ones of this model."""
    out = []
    for line in overrides:
        head = line.split("=", 1)[0]
        if ":" in head:
            owner, line = line.split(":", 1)
            if owner != model:
                continue
        out.append(line)
    return out


def bench_config(model: str, overrides: list[str], *extra: str) -> Any:
    """The bench job of ``model``: its preset ``experiments/bench/<model>.yaml`` (a model without
    one: Table 4's setting with ``model=<model>``), then the command line's overrides."""
    preset = [f"+bench={model}"] if (PRESETS / f"{model}.yaml").is_file() else ["+bench=table4", f"model={model}"]
    return compose([*preset, *model_overrides(model, overrides), *extra])


def _release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextmanager
def inference_precision(model: Any, device: torch.device, precision: str) -> Iterator[None]:
    """The fitted model under its precision policy at ``precision`` (:mod:`ulsad_bench.models.precision`:
    its networks under bf16 autocast, distances and normalisation in fp32), with its inference
    modules in channels-last memory format on CUDA for bf16; the model's own precision and
    layout are restored afterwards."""
    if precision not in PRECISIONS:
        raise ValueError(
            f"--precisions: expected a comma-separated subset of {', '.join(PRECISIONS)}, got {precision!r}"
        )
    fitted = model.ctx.precision
    modules = model.inference_modules() if device.type == "cuda" and precision == "bf16" else []
    was_channels_last = [_channels_last(module) for module in modules]
    for module in modules:
        module.to(memory_format=torch.channels_last)
    model.set_precision(precision)
    try:
        yield
    finally:  # back to each module's own layout (ULSAD is channels-last on CUDA already)
        model.set_precision(fitted)
        for module, channels_last in zip(modules, was_channels_last, strict=True):
            module.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _channels_last(module: torch.nn.Module) -> bool:
    """Whether the module's 4-D weights are in channels-last layout."""
    weights = [p for p in module.parameters() if p.dim() == 4 and p.shape[-1] * p.shape[-2] > 1]
    return bool(weights) and all(
        p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous() for p in weights
    )


def prepare_for_timing(spec: JobSpec) -> Any:
    """The job of ``spec`` (:func:`~ulsad_bench.runner.prepare`), then on CUDA the fastest kernels
    (``cudnn.benchmark`` on, deterministic algorithms off: outputs are not used for results). Set
    after every ``prepare``, which seeds and asks for deterministic kernels, so that every job of
    the bench is timed in the same state."""
    job = prepare(spec)
    if job.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.deterministic = False
        torch.use_deterministic_algorithms(False)
    return job


def epoch_times(epoch_s: list[float]) -> tuple[float, float]:
    """``(first, steady)`` of a fit's epoch times: the first epoch (it includes ``cudnn.benchmark``'s
    autotuning of every new shape on CUDA, and warm caches everywhere) and the median of the others."""
    if not epoch_s:
        raise ValueError("no epoch was timed")
    rest = epoch_s[1:] or epoch_s
    return epoch_s[0], round(statistics.median(rest), 4)


def bench_model(name: str, overrides: list[str], precisions: list[str]) -> dict[str, Any]:
    """Fit the model's bench job and measure its inference at each precision (the first one's
    figures at the top level) at batch ``profile.batch_size`` and at batch 1, with the test image
    AUROC of each against the first's; for ULSAD also its training epoch with and without
    precomputed features (first epoch and steady state)."""
    job = prepare_for_timing(JobSpec.from_config(bench_config(name, overrides)))
    start = time.perf_counter()
    fit = job.model.fit(job.train, job.val)
    fit_s = time.perf_counter() - start
    profile = job.spec.profile
    measured: dict[str, dict[str, Any]] = {}
    for precision in precisions:
        with inference_precision(job.model, job.device, precision):
            figures = profile_inference(
                job.model,
                job.test.images,
                job.device,
                batch_size=profile.batch_size,
                warmup_batches=profile.warmup_batches,
                timed_batches=profile.timed_batches,
                precision=precision,
                latency_calls=profile.latency_calls,
            )
            scores = predict_all(job.model, job.test, job.device, job.spec.eval_batch_size, progress=False)[1]
        figures["image_auroc"] = round(float(image_auroc(job.test.labels, scores)), 6)
        figures["image_auroc_points_vs_first"] = round(
            100 * (figures["image_auroc"] - next(iter(measured.values()), figures)["image_auroc"]), 3
        )
        figures["within_tolerance"] = abs(figures["image_auroc_points_vs_first"]) < AUROC_TOLERANCE_POINTS
        measured[precision] = figures
    result = {**measured[precisions[0]], "precisions": measured}
    result["fit_s_short_training"] = round(fit_s, 2)
    result["train_images"] = len(job.train)
    result["cudnn_benchmark"] = bool(torch.backends.cudnn.benchmark)
    result["deterministic"] = bool(torch.are_deterministic_algorithms_enabled())
    if name == "ulsad":
        timing = fit["timing"]
        result["feature_extraction_s"] = timing.get("features_s", 0.0)
        result["attention_targets_s_once"] = timing.get("attention_targets_s", 0.0)
        result["train_epochs_timed"] = len(timing["epoch_s"])
        result["train_epoch_s_cached_first"], result["train_epoch_s_cached"] = epoch_times(timing["epoch_s"])
        del job
        _release()
        uncached = prepare_for_timing(
            JobSpec.from_config(bench_config(name, overrides, "model.precompute_features=false"))
        )
        timing = uncached.model.fit(uncached.train, uncached.val)["timing"]
        result["train_epoch_s_uncached_first"], result["train_epoch_s_uncached"] = epoch_times(timing["epoch_s"])
        result["paper_prediction"] = predict_paper_times(result)
    return result


def predict_paper_times(ulsad: dict[str, Any]) -> dict[str, Any]:
    """What ULSAD's training at the paper's setting would take on this device, from the measured
    steady-state epoch with cached features (per training image) and the feature extraction:

    - one paper job: a category of the bench's size (``train_images``), the features once, the
      first epoch as measured, then ``PAPER_EPOCHS - 1`` steady epochs;
    - the paper's whole ULSAD study: every category of the five datasets (their training images,
      :data:`PAPER_TRAIN_IMAGES`) x ``PAPER_SEEDS`` seeds x ``PAPER_EPOCHS`` epochs, the features
      once per category (cached across seeds).
    Excluded: calibration, testing and profiling, which do not depend on the epochs.
    """
    images = ulsad["train_images"]
    per_image_epoch = ulsad["train_epoch_s_cached"] / images
    per_image_features = ulsad["feature_extraction_s"] / images
    once = ulsad["feature_extraction_s"] + ulsad["attention_targets_s_once"]
    job_s = once + ulsad["train_epoch_s_cached_first"] + (PAPER_EPOCHS - 1) * ulsad["train_epoch_s_cached"]
    total_images = sum(PAPER_TRAIN_IMAGES.values())
    study_s = total_images * (PAPER_SEEDS * PAPER_EPOCHS * per_image_epoch + per_image_features)
    return {
        "epochs": PAPER_EPOCHS,
        "seeds": PAPER_SEEDS,
        "job_train_images": images,
        "job_s": round(job_s, 1),
        "study_train_images_per_seed": total_images,
        "study_categories": PAPER_CATEGORIES,
        "study_hours": round(study_s / 3600, 2),
    }


def render_markdown(report: dict[str, Any]) -> str:
    models = report["models"]
    reference = models.get("ulsad")
    if reference is not None and "error" in reference:  # ratios need ULSAD's figures
        reference = None
    lines = [
        "# Efficiency (Table 4 protocol)",
        "",
        f"Device: {report['device']}. Images {report['image_size']} x {report['image_size']}, batch "
        f"{report['batch_size']}, {report['warmup_batches']} warm-up + {report['timed_batches']} timed batches, "
        f"precisions {', '.join(report['precisions'])} (bf16: each model's precision policy, channels-last on "
        f"CUDA), cudnn.benchmark "
        f"{report.get('cudnn_benchmark')}, deterministic algorithms {report.get('deterministic')}, "
        f"backbone {report['backbone']} ({report['weights']} weights), "
        f"memory banks from {report['train_images']} training images. Each model runs as in its own job: "
        "PatchCore last, as it sets glibc's mmap threshold for its process (field malloc_mmap_threshold).",
        "",
        "| Model | Precision | Throughput (img/s) | vs ULSAD | Peak memory (MB) | vs ULSAD | Batch 1 (img/s) | "
        "Batch 1 latency (ms) | I-AUROC vs first precision (points) | Memory measured as |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, result in models.items():
        if "error" in result:
            error = " ".join(str(result["error"]).split()).replace("|", "/")
            lines.append(f"| {name} | | failed: {error} | | | | | | | |")
            continue
        for precision, figures in result.get("precisions", {result.get("precision", ""): result}).items():
            ref = (reference or {}).get("precisions", {}).get(precision, reference) if reference else None
            t_ratio = f"{figures['throughput_img_s'] / ref['throughput_img_s']:.2f}x" if ref else "—"
            m_ratio = f"{figures['peak_memory_mb'] / ref['peak_memory_mb']:.2f}x" if ref else "—"
            delta = figures.get("image_auroc_points_vs_first")
            delta_text = "—" if delta is None else f"{delta:+.2f}" + ("" if figures.get("within_tolerance") else " (!)")
            batch1 = f"{figures['throughput_batch1_img_s']:.2f}" if "throughput_batch1_img_s" in figures else "—"
            latency = f"{figures['latency_ms']:.2f}" if "latency_ms" in figures else "—"
            lines.append(
                f"| {name} | {precision} | {figures['throughput_img_s']:.2f} | {t_ratio} | "
                f"{figures['peak_memory_mb']:.0f} | {m_ratio} | {batch1} | {latency} | {delta_text} | "
                f"{figures['memory_measure']} |"
            )
    if "ulsad_train_epoch_s_cached" in report:
        lines += ["", ulsad_training_text(report)]
    lines += ["", f"Goals: {GOALS}.", ""]
    lines += [f"- {goal}: {'met' if ok else 'NOT met'}" for goal, ok in report.get("goals", {}).items()]
    return "\n".join(lines) + "\n"


def ulsad_training_text(report: dict[str, Any]) -> str:
    """The paragraph on ULSAD's training epoch and what the paper's setting would take."""
    text = (
        f"ULSAD training epoch ({report['ulsad_train_images']} images, steady state: the median of epochs 2 to "
        f"{report['ulsad_train_epochs_timed']}): {report['ulsad_train_epoch_s_cached']:.2f} s with cached frozen "
        f"features, {report['ulsad_train_epoch_s_uncached']:.2f} s recomputing the backbone "
        f"({report['ulsad_epoch_speedup']:.2f}x); the first epoch (autotuning, warm-up) took "
        f"{report['ulsad_train_epoch_s_cached_first']:.2f} s and {report['ulsad_train_epoch_s_uncached_first']:.2f} s. "
        f"Computed once per training set and not in the cached epoch: the features "
        f"({report['ulsad_feature_extraction_s']:.1f} s, computed or read from the disk cache) and Eq. 3's "
        f"attention targets ({report['ulsad_attention_targets_s_once']:.1f} s)."
    )
    paper = report.get("ulsad_paper_prediction")
    if paper:
        text += (
            f" Predicted on this device from the steady epoch: one paper job ({paper['epochs']} epochs, "
            f"{paper['job_train_images']} training images) {paper['job_s'] / 60:.1f} min; the paper's whole ULSAD "
            f"study ({paper['study_categories']} categories x {paper['seeds']} seeds, "
            f"{paper['study_train_images_per_seed']:,} training images per seed) {paper['study_hours']:.1f} hours."
        )
    return text


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
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--out", type=Path, default=Path("reports"))
    parser.add_argument(
        "--precisions", default=None, help="comma-separated from fp32,bf16 (default: fp32,bf16 on CUDA, fp32 on CPU)"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        help="Hydra overrides for every model (device=cuda precision=bf16), or MODEL:key=value for one",
    )
    args = parser.parse_args(argv)
    names = [m for m in args.models.split(",") if m]
    names = [m for m in names if m != "patchcore"] + [m for m in names if m == "patchcore"]
    setting = bench_config(names[0] if names else "padim", args.overrides)
    try:
        device = resolve_device(str(setting.device))
    except RuntimeError as err:  # make bench DEVICE=cuda on a machine without CUDA: nothing is run
        print(f"bench: {err}; nothing was measured (run on a machine with a CUDA GPU, or drop DEVICE)", file=sys.stderr)
        return 2
    precisions = (args.precisions or ("fp32,bf16" if device.type == "cuda" else "fp32")).split(",")
    for precision in precisions:
        if precision not in PRECISIONS:
            parser.error(f"--precisions: {precision!r} is not one of {', '.join(PRECISIONS)}")
    report: dict[str, Any] = {
        "device": describe_device(device),
        "precisions": precisions,
        "image_size": int(setting.dataset.image_size),
        "batch_size": int(setting.profile.batch_size),
        "warmup_batches": int(setting.profile.warmup_batches),
        "timed_batches": int(setting.profile.timed_batches),
        "precision": str(setting.precision),
        "backbone": str(setting.backbone.name),
        "weights": str(setting.backbone.weights),
        "train_images": int(setting.dataset.synthetic.n_train),
        "overrides": list(args.overrides),
        "models": {},
    }
    for name in names:
        print(f"[bench] {name} ...", flush=True)
        try:
            result = bench_model(name, args.overrides, precisions)
        except Exception as err:  # one model's failure is reported, the others still run
            result = {"error": f"{type(err).__name__}: {err}"}
        _release()
        report["models"][name] = result
        summary = result.get("error") or f"{result['throughput_img_s']:.2f} img/s, {result['peak_memory_mb']:.0f} MB"
        print(f"[bench] {name}: {summary}", flush=True)
        if name == "ulsad" and "train_epoch_s_uncached" in result:
            for key in (
                "train_epoch_s_cached",
                "train_epoch_s_uncached",
                "train_epoch_s_cached_first",
                "train_epoch_s_uncached_first",
                "train_epochs_timed",
                "train_images",
                "attention_targets_s_once",
                "feature_extraction_s",
                "paper_prediction",
            ):
                report[f"ulsad_{key}"] = result[key]
            report["ulsad_epoch_speedup"] = round(result["train_epoch_s_uncached"] / result["train_epoch_s_cached"], 3)
            paper = result["paper_prediction"]
            print(
                f"[bench] predicted ULSAD training here: one paper job {paper['job_s'] / 60:.1f} min, the paper's "
                f"study {paper['study_hours']:.1f} h",
                flush=True,
            )
    ok = [r for r in report["models"].values() if "error" not in r]
    if ok:
        report["cudnn_benchmark"], report["deterministic"] = ok[0]["cudnn_benchmark"], ok[0]["deterministic"]
    report["goals"] = check_goals(report)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "efficiency.json", report)
    markdown = render_markdown(report)
    (args.out / "efficiency.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

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
from omegaconf import OmegaConf

from .artifacts import write_json_atomic
from .config import EXPERIMENTS_DIR, compose
from .environment import describe_device, resolve_device
from .metrics import image_auroc
from .models.precision import PRECISIONS
from .profiling import profile_inference
from .report import efficiency as efficiency_report
from .runner import predict_all, prepare
from .spec import JobSpec, model_class_of

DEFAULT_MODELS = "ulsad,padim,efficientad,dfr,cflow,fastflow,draem,reverse_distillation,patchcore"
PRESETS = EXPERIMENTS_DIR / "bench"
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
    AUROC of each against the first's; for a model that trains in epochs also its training
    (:func:`training_figures`)."""
    cfg = bench_config(name, overrides)
    job = prepare_for_timing(JobSpec.from_config(cfg))
    start = time.perf_counter()
    fit = job.model.fit(job.train, job.val)
    fit_s = time.perf_counter() - start
    measured: dict[str, dict[str, Any]] = {}
    for precision in precisions:
        figures = measure_inference(job, precision)
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
    train_images = len(job.train)
    del job
    _release()
    if "epoch_s" in (fit.get("timing") or {}):
        result["training"] = training_figures(name, overrides, cfg, fit["timing"], train_images)
    return result


def measure_inference(job: Any, precision: str) -> dict[str, Any]:
    """The fitted job's inference under ``precision`` (:func:`inference_precision`): the profile
    (:mod:`ulsad_bench.profiling`) and the test image AUROC."""
    profile = job.spec.profile
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
    return figures


def training_figures(
    name: str, overrides: list[str], cfg: Any, timing: dict[str, Any], train_images: int
) -> dict[str, Any]:
    """The fit's epochs (first apart, steady state), what it computed once (the fit record's other
    ``*_s`` timings), each variant of the preset's ``bench.compare`` (the same job with those
    overrides, timed after the same kernel settings), and, with the preset's ``bench.paper``, the
    paper's training time predicted from the steady epoch (:func:`predict_paper_times`)."""
    first, steady = epoch_times(timing["epoch_s"])
    figures: dict[str, Any] = {
        "train_images": train_images,
        "epochs_timed": len(timing["epoch_s"]),
        "first_s": first,
        "steady_s": steady,
        "once_s": {k: v for k, v in timing.items() if k.endswith("_s") and isinstance(v, (int, float))},
        "variants": {},
    }
    bench = cfg.get("bench") or {}
    for variant, variant_overrides in (bench.get("compare") or {}).items():
        job = prepare_for_timing(JobSpec.from_config(bench_config(name, overrides, *variant_overrides)))
        variant_first, variant_steady = epoch_times(job.model.fit(job.train, job.val)["timing"]["epoch_s"])
        figures["variants"][str(variant)] = {
            "overrides": list(variant_overrides),
            "first_s": variant_first,
            "steady_s": variant_steady,
        }
        del job
        _release()
    if bench.get("paper"):
        figures["paper_prediction"] = predict_paper_times(figures, OmegaConf.to_container(bench.paper, resolve=True))
    return figures


def predict_paper_times(training: dict[str, Any], paper: Any) -> dict[str, Any]:
    """What the paper's training would take on this device, from the measured steady epoch (per
    training image) and what the fit computes once per training set (``once_s``, per image):

    - one paper job: a category of the bench's size (``train_images``), the one-off work, the
      first epoch as measured, then ``epochs - 1`` steady epochs;
    - the paper's whole study: every category of its datasets (their training images,
      ``paper.train_images``) x ``seeds`` x ``epochs``, the one-off work once per category
      (cached across seeds).
    Excluded: calibration, testing and profiling, which do not depend on the epochs.
    """
    images, epochs, seeds = training["train_images"], int(paper["epochs"]), int(paper["seeds"])
    once = sum(training["once_s"].values())
    job_s = once + training["first_s"] + (epochs - 1) * training["steady_s"]
    total_images = sum(int(n) for n in paper["train_images"].values())
    study_s = total_images * (seeds * epochs * training["steady_s"] + once) / images
    return {
        "epochs": epochs,
        "seeds": seeds,
        "job_train_images": images,
        "job_s": round(job_s, 1),
        "study_train_images_per_seed": total_images,
        "study_categories": int(paper["categories"]),
        "study_hours": round(study_s / 3600, 2),
    }


def run_order(names: list[str], overrides: list[str]) -> list[str]:
    """The models in the order they are measured: a model whose fit changes the process
    (:attr:`~ulsad_bench.models.base.AnomalyModel.alters_process`) after the others, so that
    they are measured as in their own jobs."""
    alters = {name: model_class_of(str(bench_config(name, overrides).model._target_)).alters_process for name in names}
    return [n for n in names if not alters[n]] + [n for n in names if alters[n]]


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
    names = run_order([m for m in args.models.split(",") if m], args.overrides)
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
        paper = (result.get("training") or {}).get("paper_prediction")
        if paper:
            print(
                f"[bench] predicted {name} training here: one paper job {paper['job_s'] / 60:.1f} min, the paper's "
                f"study {paper['study_hours']:.1f} h",
                flush=True,
            )
    ok = [r for r in report["models"].values() if "error" not in r]
    if ok:
        report["cudnn_benchmark"], report["deterministic"] = ok[0]["cudnn_benchmark"], ok[0]["deterministic"]
    report["goals"] = efficiency_report.check_goals(report)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "efficiency.json", report)
    markdown = efficiency_report.render_markdown(report)
    (args.out / "efficiency.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

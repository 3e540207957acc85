"""Where the configs live, how they are composed (:func:`compose`, and the expansion of
``dataset.category=all``: :mod:`ulsad_bench.categories`), and which keys change a job's results.

One definition, :data:`NON_RESULT_KEYS`, serves the three places that must agree on it:

- the config hash of a record (:func:`ulsad_bench.records.config_hash`): resume skips a job whose
  ok record has the same hash;
- the run folder: ``conf/config.yaml`` names folders through the ``run_subdir`` resolver
  (:func:`run_subdir`), which keeps the command-line overrides of result keys only;
- the report's loader (:func:`ulsad_bench.report.load.experiment_config`): seeds of one cell
  must agree on every result key.

A key is matched with its dotted sub-keys (``profile`` covers ``profile.batch_size``).

The run folder's name parts (``dataset.name``, ``dataset.category``, ``model.name``, ``variant``,
``seed``) must be plain names (:func:`plain_name`): the ``run_folder`` resolver refuses any other as
Hydra names the folder, before it creates it, so no setting can lead outside ``output_root``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

REPO = Path(__file__).resolve().parent.parent
CONF_DIR = REPO / "conf"
EXPERIMENTS_DIR = REPO / "experiments"

#: Keys that do not change what a job computes, each with the reason.
NON_RESULT_KEYS: dict[str, str] = {
    "output_root": "where the record is written",
    "cache_dir": "where cached features and models live; a cache hit returns the same values",
    "dataset.root": "where the dataset lies; what it holds is compared through the record's data fingerprint",
    "logger": "where the record is also sent (wandb)",
    "progress": "progress bars",
    "resume": "whether a finished job is skipped",
    "fail_fast": "whether an error is re-raised after its record is written",
    "hydra": "the launcher and Hydra's own settings",
    "cache": (
        "the caches' size limit (evicting an entry only means recomputing it) and whether decoded images are "
        "cached (a hit returns the decoded bytes)"
    ),
    # Deliberate choices (see the README, "Where results go"):
    "device": (
        "which device of its type runs the job (cuda:0 or cuda:1, or auto): one type gives the same results "
        "(deterministic kernels), so a sweep spread over the GPUs of a machine is one experiment. The type is a "
        "result key of its own, device_type (derived from device): a CPU and a GPU train along different "
        "floating-point trajectories and PatchCore's coreset differs, so their numbers differ beyond rounding"
    ),
    "profile": (
        "the throughput/memory protocol changes the efficiency figures only, never the metrics; each record "
        "stores the protocol it was measured with (efficiency.batch_size, warmup, timed batches); re-measure with "
        "resume=false"
    ),
    "save_maps_per_defect": "how many preview maps are kept for figures",
}

#: Result keys that the run folder names in its path already (so they are not repeated in the
#: override part of the folder name): ``<dataset>/<category>/<model>[-<variant>]/.../seed=<n>``.
#: ``experiment`` and ``ablation`` presets set ``variant``. Matched exactly: ``dataset`` is the
#: dataset's name, ``dataset.image_size`` still names the folder.
FOLDER_KEYS = ("seed", "model", "dataset", "dataset.category", "variant", "experiment", "ablation")

#: The settings whose values are parts of a run folder's path (``<dataset.name>/<dataset.category>/
#: <model.name>[-<variant>]/.../seed=<seed>``), each a plain name (:data:`PLAIN_NAME`).
FOLDER_NAME_SETTINGS = ("dataset.name", "dataset.category", "model.name", "variant", "seed")
#: A plain name: letters, digits and ``._+-=,``, not starting with a dot (so never ``.`` or ``..``)
#: and without ``/``: a single folder name wherever it is put in a path.
PLAIN_NAME = re.compile(r"[A-Za-z0-9_+=,-][A-Za-z0-9._+=,-]*")
PLAIN_NAME_RULE = "letters, digits and ._+-=, only, not starting with a dot (no '/', '.' or '..')"


def plain_name(setting: str, value: object) -> str:
    """``value`` as a folder name, or a ``ValueError`` naming ``setting`` and the rule: a value that
    names a part of a run folder must be a plain name (:data:`PLAIN_NAME`)."""
    text = str(value)
    if not PLAIN_NAME.fullmatch(text):
        raise ValueError(f"{setting}={text!r}: not a plain name; a run folder's path part takes {PLAIN_NAME_RULE}")
    return text


def _no_variant(variant: object) -> bool:
    return variant in (None, "", "null")


def _check_names(names: Mapping[str, object]) -> None:
    for setting, value in names.items():
        if not (setting == "variant" and _no_variant(value)):
            plain_name(setting, value)


def check_folder_names(cfg: DictConfig) -> None:
    """Raise ``ValueError`` naming the first of :data:`FOLDER_NAME_SETTINGS` that is not a plain
    name (``variant`` may be null): for callers that compose a job without Hydra's run folder
    (the job's spec, a sweep's pre-flight and plan)."""
    _check_names({setting: OmegaConf.select(cfg, setting) for setting in FOLDER_NAME_SETTINGS})


def device_type(device: object) -> str:
    """The type of a ``device`` setting, the result key ``device_type`` (resolver of the same name in
    ``conf/config.yaml``): ``cuda:1`` -> ``cuda``, ``cpu`` -> ``cpu``, ``auto`` -> ``cuda`` where
    CUDA is available, else ``cpu`` (as :func:`ulsad_bench.environment.resolve_device` chooses)."""
    name = str(device)
    if name == "auto":
        import torch  # only to resolve auto: composing a config does not import torch otherwise

        return "cuda" if torch.cuda.is_available() else "cpu"
    return name.split(":", 1)[0]


def _matches(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def is_result_key(key: str) -> bool:
    """Whether the dotted config ``key`` can change a job's results."""
    return not _matches(key, NON_RESULT_KEYS)


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists kept as values)."""
    if not isinstance(config, Mapping):
        return {prefix: config}
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        flat.update(flatten(value, name) if isinstance(value, Mapping) else {name: value})
    return flat


def result_config(config: Mapping[str, Any], ignore: Iterable[str] = ()) -> dict[str, Any]:
    """The flattened result keys of a resolved config (``ignore``: more prefixes to drop)."""
    extra = tuple(ignore)
    return {k: v for k, v in flatten(config).items() if is_result_key(k) and not _matches(k, extra)}


def _override_key(line: str) -> str:
    """``+experiment=x`` -> ``experiment``; ``~a.b`` -> ``a.b``."""
    key = line.split("=", 1)[0]
    return key.lstrip("+~").split("@", 1)[0]


def folder_overrides(task_overrides: Iterable[str]) -> list[str]:
    """The command-line overrides that name a run folder: result keys not already in its path."""
    keep = []
    for line in task_overrides:
        key = _override_key(str(line))
        if is_result_key(key) and key not in FOLDER_KEYS:
            keep.append(str(line))
    return sorted(keep)


def run_subdir(task_overrides: Iterable[str] | None) -> str:
    """``/<overrides>`` between a run folder's model and seed parts (resolver ``run_subdir``).

    Long override lists keep a prefix plus a hash.
    """
    text = ",".join(folder_overrides(task_overrides or []))
    if not text:
        return ""
    if len(text) > 120:
        text = f"{text[:100]}-{hashlib.sha1(text.encode()).hexdigest()[:10]}"
    return f"/{text.replace('/', '_')}"


def compose(overrides: Iterable[str] = (), return_hydra_config: bool = False) -> DictConfig:
    """The project config (``conf/config.yaml``) with Hydra overrides, from any working directory.

    The presets folder (``experiments/``) is put on the search path by its absolute path, so
    ``+experiment=...`` composes wherever the caller runs.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    searchpath = f"hydra.searchpath=['{EXPERIMENTS_DIR.as_uri()}']"
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(
            config_name="config", overrides=[searchpath, *overrides], return_hydra_config=return_hydra_config
        )


def _parse(argv: Iterable[str]) -> list[Any]:
    """Hydra overrides among command-line arguments (flags such as ``-m``, ``--cfg job``, ``-cn x``
    are not overrides: anything without ``=`` or starting with ``-`` is left out)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides([a for a in argv if "=" in a and not a.startswith("-")])


def fixed_overrides(argv: Iterable[str], keep_category: bool = False) -> list[str]:
    """The overrides to compose one job's config with: no Hydra settings and no sweeps (a sweep
    over the dataset or an experiment preset is refused: their categories differ)."""
    fixed = []
    for override in _parse(argv):
        key = override.key_or_group
        if key.startswith("hydra") or (key == "dataset.category" and not keep_category):
            continue
        if override.is_sweep_override():
            if key in ("dataset", "experiment"):
                raise ValueError(
                    f"dataset.category=all with a sweep over {override.input_line}: the datasets have different "
                    "categories; run one multirun per dataset"
                )
            continue
        fixed.append(override.input_line)
    return fixed


# --------------------------------------------------------------------- a sweep's configs, as run.py -m makes them


class ConfigError(ValueError):
    """Hydra cannot compose a job of a sweep (the sweep itself would stop before launching any)."""


@contextmanager
def in_repo() -> Iterator[None]:
    """The block runs in the repository (``make sweep`` runs ``run.py`` there)."""
    before = os.getcwd()
    os.chdir(REPO)
    try:
        yield
    finally:
        os.chdir(before)


@contextmanager
def hydra_app() -> Iterator[Any]:
    """Hydra set up as ``run.py``'s ``@hydra.main`` sets it up (``conf/``, job name ``run``, the
    working directory at the repository); yields Hydra's ``Hydra`` object."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    with in_repo(), initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="run"):
        yield GlobalHydra.instance().hydra


def master_config(hydra: Any, overrides: Sequence[str]) -> DictConfig:
    """The multirun's master config, composed as ``run.py -m`` composes it."""
    from hydra.types import RunMode

    return hydra.compose_config(config_name="config", overrides=list(overrides), run_mode=RunMode.MULTIRUN)


def compose_sweep_job(
    hydra: Any, master: DictConfig, index: int, overrides: Sequence[str]
) -> tuple[DictConfig, Path, str | None]:
    """``(config, run folder, problem)`` of one job: composed as the launcher composes it
    (``load_sweep_config``), the folder resolved as ``run_job`` resolves it (``hydra.sweep.dir``
    joined with ``hydra.sweep.subdir``, with the job's Hydra config set), and the config the task
    function receives (the ``hydra`` node removed), resolved; ``problem``: why it cannot be
    resolved (the job would fail on it)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        sweep_config = hydra.config_loader.load_sweep_config(master, list(overrides))
    except Exception as err:
        raise ConfigError(
            f"Hydra cannot compose job #{index} ({' '.join(overrides)}): {type(err).__name__}: {err}; "
            "the sweep would stop before launching any job"
        ) from err
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = index  # as the basic launcher
        sweep_config.hydra.job.num = index
    previous = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(sweep_config)
    problem = None
    try:
        output_dir = str(OmegaConf.select(sweep_config, "hydra.sweep.dir"))
        output_dir = os.path.join(output_dir, _sweep_subdir(sweep_config, index, overrides))
        task = sweep_config  # run_job deletes the node from a copy; this config is the plan's alone
        with read_write(task), open_dict(task):
            del task["hydra"]
        try:
            OmegaConf.resolve(task)
        except Exception as err:  # the job meets the same error when it resolves its config
            problem = f"its config cannot be resolved: {type(err).__name__}: {err}"
    finally:
        HydraConfig.instance().cfg = previous
    return task, Path(os.path.abspath(output_dir)), problem


def _sweep_subdir(sweep_config: DictConfig, index: int, overrides: Sequence[str]) -> str:
    """``hydra.sweep.subdir`` of a job, or :class:`ConfigError` when a name it is made of is not
    plain (:func:`run_folder` refuses it; Hydra would stop the sweep on it)."""
    try:
        check_folder_names(sweep_config)
    except ValueError as err:
        raise ConfigError(
            f"job #{index} ({' '.join(overrides)}) has no run folder: {err}; the sweep would stop on it"
        ) from err
    return str(OmegaConf.select(sweep_config, "hydra.sweep.subdir"))


# --------------------------------------------------------------------- what conf/config.yaml resolves


def run_folder(
    dataset: object, category: object, model: object, variant: object, overrides: Iterable[str] | None, seed: object
) -> str:
    """A run folder's path under ``output_root`` (resolver ``run_folder`` of ``conf/config.yaml``'s
    ``hydra.run.dir`` and ``hydra.sweep.subdir``): ``<dataset>/<category>/<model>[-<variant>]``, the
    overrides that change results (:func:`run_subdir`), then ``seed=<seed>``. Each name is refused
    unless plain (:func:`plain_name`), before Hydra creates the folder."""
    _check_names(dict(zip(FOLDER_NAME_SETTINGS, (dataset, category, model, variant, seed), strict=True)))
    suffix = "" if _no_variant(variant) else f"-{variant}"
    return f"{dataset}/{category}/{model}{suffix}{run_subdir(list(overrides or []))}/seed={seed}"


# conf/config.yaml finds the presets in <repo>/experiments through this, from any directory.
os.environ.setdefault("ULSAD_BENCH_ROOT", str(REPO))
for _name, _resolver in (
    ("run_folder", run_folder),
    ("run_subdir", lambda overrides: run_subdir(list(overrides or []))),
    ("device_type", device_type),
):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _resolver)

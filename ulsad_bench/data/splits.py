"""From a dataset config to the train / validation / test samples of one category.

Each dataset format has one reader returning :class:`CategorySplits` as found on disk. The
validation split is then chosen by ``dataset.val_split``:

``auto``      the dataset's own validation folder if it has one, else ``holdout``
``holdout``   a fixed, seeded fraction (``val_fraction``, ``split_seed``) of the training
              normals, removed from training
``folder``    the dataset's validation folder (an error if there is none)
``test_set``  the normal images of the *test* set, as the ULSAD authors' configs did
              (``val_split_mode: same_as_test``). It calibrates on test data; records and
              tables mark it.

Two more image sets, present only where a job needs them (so other jobs' fingerprints and counts
are unchanged): ``threshold``, the images a segmentation threshold is computed from when
``metrics.seg_f1`` is on (:func:`threshold_split`: never test images), and ``private``, a dataset's
test sets without ground truth (MVTec AD 2's, :mod:`.mvtec_ad2`), predicted and exported only.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from .content import file_digest
from .folder import CategorySplits, read_category
from .sample import DatasetError, Sample
from .synthetic import SyntheticSpec, ensure_synthetic

VAL_SPLITS = ("auto", "holdout", "folder", "test_set")
ALL = "all"  # dataset.category=all: every category listed in the dataset's config


@dataclass(frozen=True)
class Splits:
    """The three splits of one category, and where the validation split came from."""

    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    val_source: str
    category_dir: Path
    inputs: tuple[Path, ...] = ()
    #: the images of the segmentation threshold (``metrics.seg_f1``), and where they come from
    threshold: list[Sample] = field(default_factory=list)
    threshold_source: str = ""
    #: test sets without ground truth, by folder name (:attr:`.folder.CategorySplits.private`)
    private: dict[str, list[Sample]] = field(default_factory=dict)

    @property
    def threshold_is_val(self) -> bool:
        """Whether the threshold's images are the validation split itself (read and listed once)."""
        return [s.path for s in self.threshold] == [s.path for s in self.val]

    def counts(self) -> dict[str, int]:
        counts = {
            "train": len(self.train),
            "val": len(self.val),
            "test_normal": sum(s.label == 0 for s in self.test),
            "test_anomalous": sum(s.label == 1 for s in self.test),
        }
        for kind in sorted({s.kind for s in self.test if s.label == 1}):
            counts[f"test_{kind}"] = sum(s.kind == kind for s in self.test)
        if self.threshold:
            counts["threshold"] = len(self.threshold)
        for name, samples in self.private.items():
            counts[name] = len(samples)
        return counts

    def fingerprint(self, content: bool = False, extra: tuple[Path, ...] = ()) -> dict[str, Any]:
        """What a job reads: per split, its files (images, then their masks) by name relative to
        the category folder, with byte sizes and modification times, and (group ``inputs``) the
        other files it reads (:attr:`inputs`: MVTec LOCO's ``defects_config.json``, VisA's CSV).
        ``content``: also a digest of every file's bytes (they are all read,
        :func:`~ulsad_bench.data.content.file_digest`). ``extra``: more files the job reads
        (a model's teacher, penalty images, a weights file: :meth:`ulsad_bench.spec.JobSpec.input_files`),
        in ``inputs`` too.

        Returns:
            ``{"sha256": H, "splits": {"train": {"files": N, "names_sha256": h1, "sha256": h2}, ...}}``;
            ``names_sha256`` covers names (and labels) only, ``sha256`` names, sizes and mtimes;
            with ``content``, ``content_sha256`` per group and in total. Moving the dataset folder
            leaves it unchanged; adding, removing, replacing or touching a file changes it.
        """
        total, total_content = hashlib.sha256(), hashlib.sha256()
        splits: dict[str, Any] = {}
        for name, files in self._fingerprint_groups(extra):
            names, stats, contents = hashlib.sha256(), hashlib.sha256(), hashlib.sha256()
            for path, label, defect in files:
                stat = path.stat()
                line = f"{_relative(path, self.category_dir)}|{label}|{defect}\n"
                names.update(line.encode())
                stats.update(f"{line}{stat.st_size}|{stat.st_mtime_ns}\n".encode())
                if content:
                    contents.update(f"{line}{file_digest(path)}\n".encode())
            splits[name] = {
                "files": len(files),
                "names_sha256": names.hexdigest()[:16],
                "sha256": stats.hexdigest()[:16],
            }
            total.update(f"{name}:{splits[name]['sha256']};".encode())
            if content:
                splits[name]["content_sha256"] = contents.hexdigest()[:16]
                total_content.update(f"{name}:{splits[name]['content_sha256']};".encode())
        found: dict[str, Any] = {"sha256": total.hexdigest()[:16], "splits": splits}
        if content:
            found["content_sha256"] = total_content.hexdigest()[:16]
        return found

    def _fingerprint_groups(self, extra: tuple[Path, ...]) -> list[tuple[str, list[tuple[Path, Any, str]]]]:
        named = [("train", self.train), ("val", self.val), ("test", self.test)]
        if self.threshold and not self.threshold_is_val:  # only when there are some, as inputs below
            named.append(("threshold", self.threshold))
        named += list(self.private.items())
        groups = [
            (name, [(path, s.label, s.defect_type) for s in samples for path in (s.path, *s.mask_paths)])
            for name, samples in named
        ]
        inputs = (*self.inputs, *extra)
        if inputs:  # only when there are some: fingerprints of jobs without them are unchanged
            groups.append(("inputs", [(path, "input", "") for path in inputs]))
        return groups


def _relative(path: Path, root: Path) -> str:
    """``path``'s name in a fingerprint: relative to the category folder, else to the dataset's folder
    (VisA's split CSV), else its file name (a teacher, penalty images, a weights file), so that moving
    the dataset or those files leaves the fingerprint unchanged."""
    for base in (root, root.parent):
        try:
            return path.relative_to(base).as_posix()
        except ValueError:
            continue
    return path.name


Reader = Callable[[Any, Path], CategorySplits]
READERS: dict[str, Reader] = {}


def register_reader(fmt: str) -> Callable[[Reader], Reader]:
    def wrap(fn: Reader) -> Reader:
        READERS[fmt] = fn
        return fn

    return wrap


def dataset_root(cfg: Any, cache_dir: Path) -> Path:
    """The folder holding the dataset's categories (generated for the synthetic set)."""
    if cfg.format == "synthetic":
        spec = SyntheticSpec(**dict(cfg.synthetic))
        return ensure_synthetic(cache_dir, spec)
    if cfg.root is None:
        raise DatasetError(
            f"dataset.root is not set for dataset {cfg.name!r}: pass dataset.root=/path/to/{cfg.name} "
            "(see the README for where to download it and which folder to give)"
        )
    root = Path(str(cfg.root)).expanduser()
    if not root.is_dir():
        raise DatasetError(f"dataset.root {root} does not exist: expected the {cfg.name} folder with its categories")
    return root


def categories_of(cfg: Any) -> list[str]:
    """The categories a dataset config names: ``[cfg.category]``, or every listed one for ``all``.

    ``cfg`` is the ``dataset`` node. Raises :class:`DatasetError` for a category that is not in
    ``cfg.categories``.
    """
    listed = [str(c) for c in cfg.categories]
    chosen = str(cfg.category)
    if chosen == ALL:
        return listed
    if chosen not in listed:
        raise DatasetError(
            f"unknown category {chosen!r} for dataset {cfg.name!r}: expected one of {', '.join(listed)} (or {ALL})"
        )
    return [chosen]


def with_category(cfg: Any, category: str) -> DictConfig:
    """A copy of the ``dataset`` config node with ``category`` set (for iterating ``categories_of``)."""
    copy = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    copy.category = category
    return copy


def category_dir(cfg: Any, cache_dir: Path) -> Path:
    if str(cfg.category) == ALL:
        raise DatasetError(
            f"dataset.category={ALL} names all {len(cfg.categories)} categories of {cfg.name!r}, but a job reads "
            f"one: run them as a multirun (make sweep DATASET={cfg.name}, or -m dataset.category="
            f"{','.join(str(c) for c in cfg.categories)}); python -m ulsad_bench.data checks them all"
        )
    (category,) = categories_of(cfg)
    return dataset_root(cfg, cache_dir) / category


@register_reader("synthetic")
@register_reader("mvtec")
def _read_mvtec_layout(cfg: Any, directory: Path) -> CategorySplits:
    return read_category(directory, normal_name=str(cfg.get("normal_name", "good")))


def _holdout(train: list[Sample], fraction: float, seed: int, where: Path) -> tuple[list[Sample], list[Sample]]:
    if not 0 < fraction < 1:
        raise ValueError(f"dataset.val_fraction must be in (0, 1), got {fraction}")
    if len(train) < 2:
        raise DatasetError(f"{where}: need at least 2 training images to hold out a validation split")
    n_val = min(len(train) - 1, max(1, round(fraction * len(train))))
    order = np.random.default_rng(seed).permutation(len(train))
    val_idx = set(order[:n_val].tolist())
    return [s for i, s in enumerate(train) if i not in val_idx], [s for i, s in enumerate(train) if i in val_idx]


def threshold_split(found: CategorySplits, val: list[Sample], mode: str) -> tuple[list[Sample], str]:
    """The images a segmentation threshold is computed from (``metrics.seg_f1``) and where they
    come from: the dataset's validation folder when it has one (MVTec AD 2's ``validation/good``,
    read for every model, also those that use no validation split and train on every training
    image), else the job's validation split when it is held out of training; never test images.
    None otherwise (``dataset.validation_for_all=true`` holds one out for every model)."""
    if found.validation:
        return list(found.validation), "validation folder"
    if val and mode == "holdout":
        return list(val), "the validation split (held out of training)"
    return [], (
        "none: no validation folder and no validation split held out of training (the threshold is never "
        "taken from test images; dataset.validation_for_all=true holds one out for every model)"
    )


def build_splits(cfg: Any, cache_dir: Path, uses_validation: bool = True, threshold: bool = False) -> Splits:
    """Read one category (``cfg.category``) and choose its validation split.

    ``uses_validation=False`` (a model that calibrates nothing: PaDiM, PatchCore, DFR) gets no
    validation split and trains on every training image, as anomalib trains them, unless
    ``dataset.validation_for_all`` keeps the hold-out for every model. ``threshold``: also choose
    the images of the segmentation threshold (:func:`threshold_split`).
    """
    directory = category_dir(cfg, Path(cache_dir))
    if cfg.format not in READERS:
        raise ValueError(f"unknown dataset format {cfg.format!r}; known: {', '.join(sorted(READERS))}")
    found = READERS[cfg.format](cfg, directory)
    train, val, source, mode = _validation(cfg, found, directory, uses_validation)
    splits = Splits(train, val, list(found.test), source, directory, found.inputs, private=dict(found.private))
    if not threshold:
        return splits
    images, where = threshold_split(found, val, mode)
    return dataclasses.replace(splits, threshold=images, threshold_source=where)


def _validation(
    cfg: Any, found: CategorySplits, directory: Path, uses_validation: bool
) -> tuple[list[Sample], list[Sample], str, str]:
    """``(train, validation, its source, the val_split mode applied)`` (module docstring)."""
    mode = str(cfg.get("val_split", "auto"))
    if mode not in VAL_SPLITS:
        raise ValueError(f"dataset.val_split must be one of {VAL_SPLITS}, got {mode!r}")
    if mode == "auto":
        mode = "folder" if found.validation else "holdout"
    train = list(found.train)
    if not uses_validation and not bool(cfg.get("validation_for_all", False)):
        return train, [], "none: the model uses no validation split and trains on every training image", "none"
    if mode == "folder":
        if not found.validation:
            raise DatasetError(f"{directory} has no validation/ folder; use dataset.val_split=holdout")
        val, source = list(found.validation), "validation folder"
    elif mode == "holdout":
        fraction, seed = float(cfg.val_fraction), int(cfg.split_seed)
        train, val = _holdout(train, fraction, seed, directory)
        source = f"holdout {fraction:g} of train (split_seed={seed})"
    else:
        val = [s for s in found.test if s.label == 0]
        source = "test_set (normal TEST images, as the authors' configs)"
    return train, val, source, mode

"""The evaluation protocol of a job: the harness's clean one (default) or the ULSAD authors'.

``protocol=clean``: a fixed number of epochs, the last one tested; calibration (ULSAD's
quantiles, EfficientAD's map quantiles) on a validation split that is never the test set; every
test image scored once.

``protocol=authors`` reproduces how the published ULSAD numbers were obtained, read in
sukanyapatra1997/ULSAD-2024 at commit c75e1693 (an anomalib 0.x fork; every yaml cited is
``anomalib/models/ulsad/<dataset>.yaml``, the same line numbers in all five). Each part is a
switch of its own, so that its effect can be measured apart (``make`` the ``protocol_gap``
report):

``select_on_test``
    Validation runs every epoch (``check_val_every_n_epoch: 1``, mvtec.yaml:89) on the test set
    itself (``val_split_mode: same_as_test``, mvtec.yaml:20; ``self.val_data = self.test_data``,
    ``anomalib/data/base/datamodule.py:156-158``); ``ModelCheckpoint(monitor=image_AUROC,
    mode=max)`` (``anomalib/utils/callbacks/__init__.py:60-69`` with mvtec.yaml:33-36) keeps the
    best epoch, and ``train.py:106-114`` tests that checkpoint (``LoadModelCallback``). There is
    no early stopping: all ``max_epochs`` run. Here: the model hands itself to
    :class:`EpochSelection` every ``protocol.eval_every`` epochs, which scores the test set
    through the harness's one metric path (image AUROC, :func:`ulsad_bench.metrics.image_auroc`)
    and keeps the state of the best epoch (the first of equal ones, as ``mode=max`` keeps the
    first); the record stores the chosen epoch and the whole curve.
``drop_last_test``
    The test (and validation, the same data) loader has ``drop_last=True``
    (``datamodule.py:190-209``) with ``eval_batch_size: 32`` (mvtec.yaml:9), and the test set is
    sorted by image path (``anomalib/data/base/dataset.py:93``; ``anomalib/data/mvtec.py:147``),
    so the last ``N mod 32`` images of the path order are never scored: on MVTec AD 221 of the
    1725 test images, 39 of them normal (bottle keeps 1 of its 20 normal images, toothbrush 2 of
    12). Here: the test split is sorted by path and cut to a multiple of
    ``protocol.test_batch_size``, for selection, calibration and the reported metrics alike.
``quantiles_from_test``
    ULSAD's quantiles are computed from the normal images of the validation (= test) split
    (``lightning_model.py:100-107``), at the start of the last epoch's validation only
    (``lightning_model.py:200-206``); they are parameters initialised to 0
    (``torch_model.py:234-241``) and the maps are left unnormalised while they are all 0
    (``torch_model.py:254-258, 359-361``). A best checkpoint of an earlier epoch therefore carries
    zeros and is tested on unnormalised maps: that is part of ``select_on_test`` here too (an
    earlier epoch's restored state carries its unset quantiles: ULSAD's model leaves maps
    unnormalised while its quantiles are all 0,
    :class:`ulsad_bench.models.ulsad.torch_model.UlsadModel`). Here: the validation split is the
    normal images of the (cut) test split and the training set keeps every training image (no
    hold-out), as ``dataset.val_split=test_set``.

Models without training epochs (PaDiM, PatchCore) are affected by ``drop_last_test`` (and, where
they calibrate, ``quantiles_from_test``) only. Every number obtained with any switch on is
test-selected or test-calibrated: records carry ``protocol``, tables mark it and never average it
with clean numbers (:mod:`ulsad_bench.report`).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .data import Splits
from .metrics import image_auroc

SWITCHES = ("select_on_test", "drop_last_test", "quantiles_from_test")
#: ``val_source`` of a validation split made of test images (the report marks sources containing "TEST")
TEST_VAL_SOURCE = "normal TEST images (protocol.quantiles_from_test, as the authors' code)"


@dataclass(frozen=True)
class Protocol:
    """``cfg.protocol`` (conf/protocol/*.yaml), checked."""

    name: str = "clean"
    select_on_test: bool = False
    drop_last_test: bool = False
    quantiles_from_test: bool = False
    eval_every: int = 1
    test_batch_size: int = 32

    @classmethod
    def from_config(cls, cfg: Any) -> Protocol:
        """From a job's config (``protocol`` missing in older configs: clean)."""
        values = cfg.get("protocol") or {}
        protocol = cls(**{k: values[k] for k in asdict(cls()) if k in values})
        for name in ("eval_every", "test_batch_size"):
            value = getattr(protocol, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"protocol.{name}={value!r}: expected a positive integer")
        for name in SWITCHES:
            if not isinstance(getattr(protocol, name), bool):
                raise ValueError(f"protocol.{name}={getattr(protocol, name)!r}: expected true or false")
        return protocol

    @property
    def switches(self) -> list[str]:
        """The authors' parts that are on."""
        return [name for name in SWITCHES if getattr(self, name)]

    @property
    def tag(self) -> str:
        """``clean``, ``authors`` (all three parts) or the parts that are on, joined by ``+``."""
        on = self.switches
        return "clean" if not on else "authors" if len(on) == len(SWITCHES) else "+".join(on)

    def as_record(self) -> dict[str, Any]:
        return {**asdict(self), "tag": self.tag}


def apply_to_splits(protocol: Protocol, splits: Splits) -> tuple[Splits, dict[str, Any] | None]:
    """The splits as the protocol reads them, and what was left out of the test set (None when
    nothing was): ``drop_last_test`` sorts the test split by path and cuts it to a multiple of
    ``test_batch_size``; ``quantiles_from_test`` makes the validation split (of a model that uses
    one) the normal images of that test split."""
    test, dropped = list(splits.test), None
    if protocol.drop_last_test:
        test = sorted(test, key=lambda sample: str(sample.path))
        keep = len(test) - len(test) % protocol.test_batch_size
        left_out = test[keep:]
        test = test[:keep]
        dropped = {
            "batch_size": protocol.test_batch_size,
            "scored": len(test),
            "dropped": len(left_out),
            "dropped_normal": sum(s.label == 0 for s in left_out),
            "dropped_anomalous": sum(s.label == 1 for s in left_out),
        }
        if not test:
            raise ValueError(
                f"protocol.drop_last_test: the test set has {len(left_out)} images, fewer than "
                f"protocol.test_batch_size={protocol.test_batch_size}: nothing would be scored"
            )
    val, source = splits.val, splits.val_source
    if protocol.quantiles_from_test and splits.val:
        val, source = [s for s in test if s.label == 0], TEST_VAL_SOURCE
    return dataclasses.replace(splits, val=val, test=test, val_source=source), dropped


def _snapshot(modules: list[torch.nn.Module]) -> list[dict[str, torch.Tensor]]:
    return [copy.deepcopy(module.state_dict()) for module in modules]


@dataclass
class EpochSelection:
    """``protocol.select_on_test``: the test image AUROC every ``every`` epochs, the best state kept.

    A model with training epochs calls it (``ctx.on_epoch_end``) after each epoch; the last
    epoch is scored by :meth:`finish`, after the model's own calibration at the end of ``fit``
    (the authors' quantiles are set at the start of the last epoch's validation). ``score``
    returns the test set's image scores for the model as it is.
    """

    labels: np.ndarray
    score: Callable[[Any], np.ndarray]
    every: int = 1
    curve: list[dict[str, float]] = field(default_factory=list)
    epochs: int | None = None
    best_epoch: int | None = None
    best_auroc: float = -1.0
    best_state: list[dict[str, torch.Tensor]] | None = None
    seconds: float = 0.0  # spent scoring the test set (kept out of the job's fit time)

    def __call__(self, model: Any, epoch: int, epochs: int) -> None:
        """After training epoch ``epoch`` (1-based) of ``epochs``."""
        self.epochs = epochs
        if epoch < epochs and epoch % self.every == 0:
            self._evaluate(model, epoch, keep_state=True)

    def _evaluate(self, model: Any, epoch: int, keep_state: bool) -> None:
        start = time.perf_counter()
        auroc = image_auroc(self.labels, self.score(model))
        self.seconds += time.perf_counter() - start
        self.curve.append({"epoch": epoch, "image_auroc": round(float(auroc), 6)})
        if auroc > self.best_auroc:  # strictly better: the first of equal epochs is kept (mode=max)
            self.best_auroc, self.best_epoch = float(auroc), epoch
            self.best_state = _snapshot(model.inference_modules()) if keep_state else None

    def finish(self, model: Any) -> dict[str, Any]:
        """Score the fitted model as the last epoch, restore the best epoch's state if it was an
        earlier one, and return the record's ``selection`` (a model that never reported an epoch,
        PaDiM, PatchCore, has nothing to select from: ``applies`` false, nothing scored)."""
        if self.epochs is None:
            return {"applies": False, "reason": "the model has no training epochs: nothing to select from"}
        last = self.epochs
        self._evaluate(model, last, keep_state=False)
        restored = self.best_epoch != last and self.best_state is not None
        if restored:
            assert self.best_state is not None
            for module, state in zip(model.inference_modules(), self.best_state, strict=True):
                module.load_state_dict(state)
        self.best_state = None
        return {
            "applies": True,
            "restored_earlier_epoch": restored,
            "metric": "image_auroc (test set)",
            "epoch": self.best_epoch,
            "last_epoch": last,
            "eval_every": self.every,
            "best_image_auroc": round(self.best_auroc, 6),
            "last_image_auroc": self.curve[-1]["image_auroc"],
            "curve": self.curve,
            "epochs_evaluated": len(self.curve),
        }

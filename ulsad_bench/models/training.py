"""One training loop for every model that trains in epochs (ULSAD, DFR, EfficientAD).

:func:`train_epochs` runs a model's epochs and does, the same way for each, what every loop
needs around the model's own steps: the networks in training mode (again after the
``protocol.select_on_test`` hook put them in eval mode), each epoch timed, the losses summed on
the device and read once per epoch (:class:`LossSums`), a non-finite loss stopping the job at
the end of the epoch it appeared in (naming the step), the progress bar, and the epoch hook
(:meth:`~ulsad_bench.models.base.AnomalyModel.end_epoch`).

Why the sums stay on the device: reading a loss (``loss.item()``, ``float(loss)``, ``if not
torch.isfinite(loss)``) makes the host wait for the device at every step, which on a GPU costs
more than a small model's step itself. The sums are float64 and add the float32 losses in step
order, exactly as the Python floats of a per-step ``float(loss)`` would, so the recorded losses
do not change.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data import ImageSet
from .base import AnomalyModel


class LossSums:
    """An epoch's sums of named losses, on the device.

    :meth:`add` adds one step's losses (scalars on the device) weighted by ``weight`` (1: mean
    over steps; the batch size: mean over samples) and remembers the first step whose losses
    are not all finite, all without a host sync; :meth:`means` reads them once.
    """

    def __init__(self, names: Sequence[str], device: torch.device) -> None:
        self.names = list(names)
        self.totals = torch.zeros(len(self.names), dtype=torch.float64, device=device)
        self.first_bad_step = torch.zeros((), dtype=torch.int64, device=device)  # 0: none yet (steps are 1-based)
        self.weight = 0.0
        self.steps = 0

    def add(self, losses: Mapping[str, torch.Tensor], weight: float = 1.0) -> None:
        values = torch.stack([losses[name].detach().reshape(()) for name in self.names])
        self.totals += values.double() * weight
        self.steps += 1
        self.weight += weight
        bad = ~torch.isfinite(values).all() & (self.first_bad_step == 0)
        self.first_bad_step = torch.where(bad, self.steps, self.first_bad_step)

    def means(self) -> tuple[dict[str, float], int]:
        """``({name: mean}, first non-finite step or 0)``: one read from the device."""
        read = torch.cat([self.totals, self.first_bad_step.double().reshape(1)]).tolist()
        means = {name: total / self.weight for name, total in zip(self.names, read[:-1], strict=True)}
        return means, int(read[-1])


@dataclass
class TrainingLog:
    """What :func:`train_epochs` measured: the mean losses and the seconds of every epoch."""

    losses: list[dict[str, float]] = field(default_factory=list)
    epoch_s: list[float] = field(default_factory=list)


def train_epochs(
    model: AnomalyModel,
    epochs: int,
    run_epoch: Callable[[int, LossSums], None],
    modules: Sequence[nn.Module],
    names: Sequence[str],
    hint: str = "",
    before_hook: Callable[[], None] | None = None,
) -> TrainingLog:
    """Train ``model`` for ``epochs`` epochs; ``run_epoch(epoch, sums)`` runs one epoch's steps
    (``epoch`` 0-based) and adds each step's losses ``names`` to ``sums``.

    Args:
        modules: the networks being trained (set to training mode before each epoch, to eval
            mode at the end).
        hint: the settings named when a loss is not finite (``lr 2e-4, batch size 8``).
        before_hook: run before the epoch hook under ``protocol.select_on_test`` (EfficientAD
            takes its map quantiles there).

    Raises:
        FloatingPointError: a loss was not finite in an epoch (raised when the epoch ends).
    """
    log = TrainingLog()
    device = model.ctx.device
    bar = tqdm(range(epochs), desc=f"{model.name}: train", leave=False, disable=not model.ctx.progress)
    for epoch in bar:
        for module in modules:
            module.train()
        start = time.perf_counter()
        sums = LossSums(names, device)
        run_epoch(epoch, sums)
        means, bad_step = sums.means()  # waits for the device: the epoch's time is complete
        log.epoch_s.append(round(time.perf_counter() - start, 4))
        if bad_step:
            values = ", ".join(f"{name} {value}" for name, value in means.items())
            raise FloatingPointError(
                f"{model.name}: training loss not finite at epoch {epoch + 1}, step {bad_step} (epoch means: "
                f"{values}; {hint}): stopping instead of training on NaN"
            )
        log.losses.append(means)
        bar.set_postfix(loss=f"{means[names[-1]]:.4f}", refresh=False)
        if model.ctx.on_epoch_end is not None:
            if before_hook is not None:
                before_hook()
            model.end_epoch(epoch + 1, epochs)
    for module in modules:
        module.eval()
    return log


def train_batches(
    model: AnomalyModel,
    train: ImageSet,
    epochs: int,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    step_loss: Callable[[torch.Tensor], torch.Tensor],
    modules: Sequence[nn.Module],
    hint: str = "",
) -> tuple[TrainingLog, int]:
    """``epochs`` epochs of one loss on mini-batches, as anomalib's Lightning loop runs a
    ``training_step`` returning one loss (FastFlow, Reverse Distillation): the training images moved
    to the device once (uint8), shuffled each epoch from the run seed, the last partial batch kept
    (anomalib's train loader has no ``drop_last``); per batch ``step_loss(images)`` (``[B, 3, S, S]``
    in [0, 1] on the device), one backward pass, one optimiser step. The loss's epoch mean is over
    images. Returns the :class:`TrainingLog` (loss ``"loss"``) and the number of steps."""
    if len(train) == 0:
        raise ValueError(f"{model.name}: no images to train on")
    on_device = replace(train, images=train.images.to(model.ctx.device))
    generator = torch.Generator().manual_seed(model.ctx.seed)
    steps = 0

    def run_epoch(epoch: int, sums: LossSums) -> None:
        nonlocal steps
        for idx, images in on_device.batches(batch_size, shuffle=True, generator=generator):
            loss = step_loss(images)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums.add({"loss": loss}, weight=len(idx))
            steps += 1

    log = train_epochs(model, epochs, run_epoch, modules, ["loss"], hint=hint)
    return log, steps

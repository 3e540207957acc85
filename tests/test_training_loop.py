"""The one training loop (ulsad_bench/models/training.py): losses summed on the device and read once
per epoch, the same numbers as reading them at every step, the epoch hook, training mode restored."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ulsad_bench import runner
from ulsad_bench.models.training import LossSums, train_epochs
from ulsad_bench.spec import JobSpec

ULSAD = ["model=ulsad", "model.feature_dim=16", "model.epochs=3", "model.batch_size=4", "model.reuse_trained=false"]


def per_step_ulsad_training(job) -> tuple[list[dict[str, float]], dict[str, torch.Tensor]]:
    """ULSAD's training loop as it was before the one loop (Algorithm 1, the losses read with
    ``float()`` after every step): the reference the loop must equal bit for bit on the CPU."""
    model, train = job.model, job.train
    net = model.net
    features = model.features(train)
    mean = features.double().mean(dim=(0, 2, 3))
    std = features.double().std(dim=(0, 2, 3), correction=0)
    net.set_feature_stats(mean.float(), torch.where(std > 1e-6, std, torch.ones_like(std)).float())
    from ulsad_bench.models.ulsad.losses import attention_targets

    targets = attention_targets(features, net.standardize, model.batch_size)
    net.frn.train()
    net.global_ae.train()
    optimizer = torch.optim.Adam([*net.frn.parameters(), *net.global_ae.parameters()], lr=model.lr, weight_decay=2e-5)
    generator = torch.Generator().manual_seed(model.ctx.seed)
    history = []
    for _ in range(model.epochs):
        sums: dict[str, float] = {}
        steps = 0
        for idx, images in train.batches(model.batch_size, shuffle=True, generator=generator, drop_last=True):
            u = net.standardize(features[idx])
            losses = model.loss(u, net.frn(u), net.global_ae(images), targets[idx])
            total = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            steps += 1
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
            sums["total"] = sums.get("total", 0.0) + float(total.detach())
        history.append({name: value / steps for name, value in sums.items()})
    state = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("aggregator.")}
    return history, state


def test_ulsad_trains_bit_for_bit_as_the_per_step_loop_on_the_cpu(tiny_cfg) -> None:
    cfg = tiny_cfg(*ULSAD, "feature_cache=false")
    job = runner.prepare(JobSpec.from_config(cfg))
    fit = job.model.fit(job.train, job.val)
    reference, state = per_step_ulsad_training(runner.prepare(JobSpec.from_config(cfg)))
    assert fit["loss_first_epoch"] == reference[0] and fit["loss_last_epoch"] == reference[-1]
    assert fit["loss_total_per_epoch"] == [round(h["total"], 6) for h in reference]
    trained = job.model._trained_state()
    assert trained.keys() == state.keys()
    assert all(torch.equal(trained[k], state[k]) for k in state if not k.startswith("quantiles"))
    assert len(fit["timing"]["epoch_s"]) == 3 and fit["optimizer"] == "Adam"  # fused Adam on CUDA only


def test_loss_sums_equal_python_float_sums_and_find_the_first_bad_step() -> None:
    sums = LossSums(["a", "b"], torch.device("cpu"))
    values = [(0.1, 2.0), (1e-8, 3.5), (0.3, 1e7)]
    for a, b in values:
        sums.add({"a": torch.tensor(a), "b": torch.tensor(b)}, weight=2)
    means, bad = sums.means()
    expected_a = sum(float(torch.tensor(a)) * 2 for a, _ in values) / 6
    assert means["a"] == expected_a and bad == 0
    sums.add({"a": torch.tensor(float("nan")), "b": torch.tensor(1.0)})
    sums.add({"a": torch.tensor(1.0), "b": torch.tensor(float("inf"))})
    assert sums.means()[1] == 4  # the first non-finite step, 1-based


def test_the_loop_restores_training_mode_after_the_epoch_hook_and_stops_on_nan(tiny_cfg) -> None:
    job = runner.prepare(JobSpec.from_config(tiny_cfg("model=padim")))  # any set-up model: the loop needs its context
    network = nn.Linear(2, 1)
    modes, hooked = [], []

    def hook(model, epoch: int, epochs: int) -> None:
        hooked.append((epoch, epochs))
        network.eval()  # as the test-set selection does

    job.model.ctx.on_epoch_end = hook

    def run_epoch(epoch: int, sums: LossSums) -> None:
        modes.append(network.training)
        sums.add({"loss": network(torch.ones(1, 2)).sum()})

    log = train_epochs(job.model, 3, run_epoch, [network], ["loss"])
    assert modes == [True, True, True] and hooked == [(1, 3), (2, 3), (3, 3)] and not network.training
    assert len(log.losses) == len(log.epoch_s) == 3

    def diverge(epoch: int, sums: LossSums) -> None:
        sums.add({"loss": torch.tensor(1.0)})
        sums.add({"loss": torch.tensor(float("nan"))})

    with pytest.raises(FloatingPointError, match=r"padim: training loss not finite at epoch 1, step 2 .*lr 9"):
        train_epochs(job.model, 2, diverge, [network], ["loss"], hint="lr 9")

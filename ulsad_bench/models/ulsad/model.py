"""ULSAD as a model of the harness: training (Algorithm 1), calibration and inference (Section 3.5).

Paper values (Section 4.1): Wide-ResNet-50-2 layers 2 and 3, c* = 384, 256 x 256 images,
Adam with learning rate 2e-4 and weight decay 2e-5, 200 epochs, alpha = 0.9, beta = 0.995,
lambda_l = lambda_g = 0.5 (Table 3, last row). From the authors' code, where the paper is
silent: batch size 8 with the last partial batch dropped (their training loader's
``drop_last=True``; ``drop_last``), Gaussian blur of the upsampled maps with sigma 4 (at 256 px;
scaled with the image size by default), quantiles computed on the upsampled *and blurred* maps
(their forward pass in eval mode with the quantiles unset returns the blurred maps, and those
are what the quantiles are taken from; ``quantiles_on=blurred``; ``upsampled`` takes them before
the blur). The blur is linear, so blurring before or after the affine normalisation gives the
same maps; only where the quantiles are taken matters.
Unlike the authors' configs, the quantiles come from the validation split, never from the
test set (see ``dataset.val_split``), and training runs the fixed number of epochs and tests
the last one. The authors' configs validate on the test set every epoch and test the
checkpoint with the best test image AUROC over all epochs (``ModelCheckpoint(monitor=
image_AUROC, mode=max)`` with validation = test); they do not early-stop.

Speed: ULSAD uses no training-time augmentation and its backbone is frozen, so the patch
features U are extracted once per (images, backbone, weights, layers, c*, size) through the
harness's feature cache and reused by every epoch, seed and job (``precompute_features``; false
runs the backbone on every batch, to measure what this saves); only the global branch sees the
images during training. A trained model is also cached by everything that determines it
(data, backbone, seed, every training value), so jobs that differ only in scoring (alpha,
beta, branch) reuse it, e.g. the alpha x beta grid of Figure 8.

Ablations (Table 3, Figure 8) are config values: ``lambda_l``, ``lambda_g``, ``loss_pg``
(``attention`` = L_pg of Eq. 5, ``l2`` = its variant L^d_pg between U^ and U, ``none``),
``loss_lg`` (Eq. 6 on/off), ``branch`` (score with ``local``, ``global`` or ``both``
maps), ``alpha``, ``beta``. Without L_lg, U'' is not trained, so the global map compares
what L_pg trained instead (our choice; the paper does not say): A^ with A for
``loss_pg=attention``, U^ with U for ``loss_pg=l2``.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from ...data import ImageSet
from ...environment import adam_implementation, keep_on_device, seeded
from ..base import AnomalyModel, CacheEntry, CacheFacts, Prediction, RunContext
from ..settings import adopt, as_record
from ..training import LossSums, train_epochs
from .losses import UlsadLoss, attention_targets
from .settings import TRAINED_BY, UlsadSettings
from .torch_model import (
    FeatureAggregator,
    FeatureReconstructionNetwork,
    GlobalAutoencoder,
    UlsadModel,
)

#: the trained-model cache entry: the inference model's state dict without the frozen backbone
#: (rebuilt from its weights file), bump when the entry's layout changes
TRAINED_FORMAT = 2
FEATURES_ENTRY = "ULSAD features (train + val)"
TRAINED_ENTRY = "ULSAD trained models"


def feature_key(
    images: str, backbone: str, weights: Any, layers: list[str], channels: int, size: int, precision: str
) -> dict[str, Any]:
    """The feature cache's key of a split's frozen features U: everything they depend on (the
    images, the backbone and its weights, the layers, c*, the size, the precision policy)."""
    return {
        "what": "ulsad-features",
        "images": images,
        "backbone": backbone,
        "weights": weights,
        "layers": list(layers),
        "channels": channels,
        "size": size,
        "precision": precision,  # the backbone runs under the precision policy
    }


def trained_key(features: dict[str, Any], model: Any, seed: int, device_type: str, image_size: int) -> dict[str, Any]:
    """The trained-model cache's key: the training features' key, the seed, the device type and
    every training setting (:data:`TRAINED_BY`) of ``model``."""
    return {
        **features,
        "what": "ulsad-trained",
        "format": TRAINED_FORMAT,
        "seed": seed,
        "device": device_type,
        "precision": features["precision"],
        "image_size": image_size,
        **{k: getattr(model, k) for k in TRAINED_BY},
    }


@functools.lru_cache(maxsize=32)
def trained_state_bytes(feature_dim: int, architecture: str, image_size: int) -> int:
    """Bytes of a trained-model cache entry: the FRN's and global autoencoder's state (built on
    the meta device) and the channel statistics."""
    with torch.device("meta"):
        modules = [
            FeatureReconstructionNetwork(feature_dim, architecture, True),
            GlobalAutoencoder(image_size, feature_dim, architecture),
        ]
    state = sum(v.numel() * v.element_size() for m in modules for v in m.state_dict().values())
    return state + 2 * feature_dim * 4


def resolve_output_relu(setting: bool | str, weights_policy: str) -> bool:
    """The FRN's output ReLU: ``auto`` keeps it (Table 5, the code) for pretrained weights
    (``imagenet`` or a file) and drops it for random-init backbones, which the paper never used:
    standardised random features are half negative, which a ReLU output cannot reconstruct."""
    if setting == "auto":
        return weights_policy != "random"
    return bool(setting)


class Ulsad(AnomalyModel):
    """Unified Logical and Structural Anomaly Detection (Patra & Ben Taieb, TMLR 2024)."""

    name = "ulsad"
    image_size_multiple = 32  # the global autoencoder's encoder (torch_model.GlobalAutoencoder)

    def __init__(self, **settings: Any) -> None:
        """``settings``: :class:`~.settings.UlsadSettings`'s (``conf/model/ulsad.yaml``), checked there."""
        adopt(self, UlsadSettings(**settings))
        self.loss = UlsadLoss(self.settings)

    # ------------------------------------------------------------------ set-up

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        device = ctx.device
        random_init = ctx.backbone.weights.policy == "random"
        self.output_relu = resolve_output_relu(self.output_relu, ctx.backbone.weights.policy)
        if self.output_relu and random_init:
            logging.getLogger("ulsad_bench").warning(
                "ulsad: output_relu=true with a random-init backbone: the FRN's final ReLU cannot reconstruct "
                "the negative half of standardised random features, so the local branch is near chance; "
                "pass model.output_relu=false (or auto) for a meaningful run on random weights (it is recorded)"
            )
        if self.blur_sigma is None:  # the authors' sigma 4 at 256 px, scaled with the image size
            self.blur_sigma = 4.0 * ctx.image_size / 256
        aggregator = FeatureAggregator(ctx.backbone, self.layers, self.feature_dim)
        with seeded(ctx.seed, device):
            frn = FeatureReconstructionNetwork(self.feature_dim, self.architecture, self.output_relu)
            global_ae = GlobalAutoencoder(ctx.image_size, self.feature_dim, self.architecture)
        self.net = UlsadModel(
            aggregator,
            frn,
            global_ae,
            ctx.image_size,
            self.settings,
            self.blur_sigma,
            ctx.autocast_dtype,
        ).to(device)
        if device.type == "cuda":
            for module in (self.net.aggregator, self.net.frn, self.net.global_ae):
                module.to(memory_format=torch.channels_last)

    @classmethod
    def cache_entries(cls, settings: Mapping[str, Any], facts: CacheFacts) -> tuple[list[CacheEntry], list[str]]:
        """The frozen features of train and val (N x c* x (S/8)^2 x 4 bytes, shared by every seed
        and scoring setting) and, with ``reuse_trained``, the trained model of each seed."""
        model = cls(**settings)
        side = facts.image_size // 8
        keys = {}
        entries = []
        for images, count in ((facts.train_id, facts.n_train), (facts.val_id, facts.n_val)):
            if count:
                key = feature_key(
                    images,
                    facts.backbone,
                    facts.weights_policy,
                    model.layers,
                    model.feature_dim,
                    facts.image_size,
                    facts.precision,
                )
                keys.setdefault("train", key)
                nbytes = count * model.feature_dim * side * side * 4
                entries.append(CacheEntry(FEATURES_ENTRY, json.dumps(key, sort_keys=True, default=str), nbytes))
        if model.reuse_trained and facts.reuses_trained and "train" in keys:
            key = trained_key(keys["train"], model, facts.seed, facts.device_type, facts.image_size)
            nbytes = trained_state_bytes(model.feature_dim, model.architecture, facts.image_size)
            entries.append(CacheEntry(TRAINED_ENTRY, json.dumps(key, sort_keys=True, default=str), nbytes))
        return entries, []

    def set_precision(self, precision: str) -> None:
        super().set_precision(precision)
        self.net.autocast_dtype = self.ctx.autocast_dtype

    @property
    def quantiles(self) -> dict[str, float]:
        """q_alpha, q_beta per branch (Section 3.5), from the inference model's buffer."""
        return self.net.quantile_values()

    def _feature_key(self, images: ImageSet) -> dict[str, Any]:
        spec = self.ctx.backbone
        return feature_key(
            images.key, spec.name, spec.weights.identity, self.layers, self.feature_dim, images.size, self.ctx.precision
        )

    def features(self, images: ImageSet) -> torch.Tensor:
        """Frozen features U of a split, ``[N, c*, S/8, S/8]`` on CPU, computed once (cached)."""

        def compute() -> torch.Tensor:
            batches = images.batches(self.feature_batch_size, progress=self.ctx.progress, desc="ulsad: features")
            return torch.cat([self.net.features(self._to_device(batch)).cpu() for _, batch in batches])

        return self.ctx.feature_cache.get_or_compute(self._feature_key(images), compute)[0]

    def _to_device(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.ctx.device, non_blocking=True)
        if self.ctx.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    # ------------------------------------------------------------------ training

    def _train(self, train: ImageSet, features: torch.Tensor | None) -> dict[str, Any]:
        """Algorithm 1. ``features``: the precomputed U of ``train`` ``[N, c*, h, w]``; None runs
        the frozen backbone (and Eq. 3's A) on every batch (``precompute_features=false``).

        On an accelerator the training images, the features and the attention targets move to
        it once when they fit (:func:`~ulsad_bench.environment.keep_on_device`), Adam is fused on
        CUDA, and the losses are read once per epoch (:func:`..training.train_epochs`)."""
        device, net = self.ctx.device, self.net
        parameters = [*net.frn.parameters(), *net.global_ae.parameters()]
        optimizer = torch.optim.Adam(
            parameters, lr=self.lr, weight_decay=self.weight_decay, **adam_implementation(device)
        )
        timing: dict[str, Any] = {}
        cache_targets = features is not None and self.loss_pg == "attention" and self.cache_attention_target
        if features is not None and keep_on_device(features.nbytes * (2 if cache_targets else 1), device):
            features = features.to(device)
        targets = None
        if cache_targets:
            assert features is not None
            start = time.perf_counter()
            targets = attention_targets(features, net.standardize, self.batch_size)
            timing["attention_targets_s"] = round(time.perf_counter() - start, 3)
        if keep_on_device(train.images.nbytes, device):
            train = replace(train, images=train.images.to(device))
        generator = torch.Generator().manual_seed(self.ctx.seed)
        # The authors' loader drops the last partial batch (drop_last=True); a batch of one would
        # also break the batch norm of the global autoencoder's 1 x 1 bottleneck.
        if self.drop_last and len(train) < self.batch_size:
            raise ValueError(
                f"ULSAD: {len(train)} training images are fewer than model.batch_size={self.batch_size} with "
                "model.drop_last=true: no full batch to train on; lower model.batch_size"
            )

        def run_epoch(epoch: int, sums: LossSums) -> None:
            batches = train.batches(self.batch_size, shuffle=True, generator=generator, drop_last=self.drop_last)
            for batch_idx, images in batches:
                x = self._to_device(images)
                if features is None:
                    u = net.standardize(net.features(x))
                else:
                    u = net.standardize(features[batch_idx.to(features.device)])
                u_tilde = net.frn(u)  # the networks run under the precision policy, return fp32
                u_hat = net.global_ae(x)
                target = None if targets is None else targets[batch_idx.to(targets.device)].to(device)
                losses = self.loss(u, u_tilde, u_hat, target)
                total = sum(losses.values())
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                sums.add({**losses, "total": total})

        log = train_epochs(
            self,
            self.epochs,
            run_epoch,
            [net.frn, net.global_ae],
            [*self.loss.terms, "total"],
            hint=f"lr {self.lr}, batch size {self.batch_size}",
        )
        return {
            "epochs": self.epochs,
            "loss_first_epoch": log.losses[0],
            "loss_last_epoch": log.losses[-1],
            "loss_total_per_epoch": [round(h["total"], 6) for h in log.losses],
            "optimizer": "Adam (fused)" if adam_implementation(device) else "Adam",
            "timing": {**timing, "epoch_s": log.epoch_s},
        }

    def _trained_key(self, train: ImageSet) -> dict[str, Any]:
        return trained_key(self._feature_key(train), self, self.ctx.seed, self.ctx.device.type, self.ctx.image_size)

    def _trained_state(self) -> dict[str, torch.Tensor]:
        """The inference model's state dict without the frozen backbone (the aggregator holds no
        trained values: it is rebuilt from its weights)."""
        return {k: v for k, v in self.net.state_dict().items() if not k.startswith("aggregator.")}

    def _load_trained_state(self, state: dict[str, torch.Tensor]) -> None:
        result = self.net.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith("aggregator.")]
        if missing or result.unexpected_keys:
            raise RuntimeError(f"ulsad: trained-model cache entry does not fit: {missing or result.unexpected_keys}")

    def fit(self, train: ImageSet, val: ImageSet) -> dict[str, Any]:
        start = time.perf_counter()
        features = self.features(train)
        features_s = round(time.perf_counter() - start, 3)
        mean = features.double().mean(dim=(0, 2, 3))
        std = features.double().std(dim=(0, 2, 3), correction=0)
        std = torch.where(std > 1e-6, std, torch.ones_like(std))  # guard dead channels (random backbones)
        self.net.set_feature_stats(mean.float(), std.float())

        def train_now() -> dict[str, Any]:
            info = self._train(train, features if self.precompute_features else None)
            info["timing"]["features_s"] = features_s
            return {"state_dict": self._trained_state(), "info": info}

        # under protocol.select_on_test the epochs are scored as they train: never from the cache
        if self.reuse_trained and self.ctx.on_epoch_end is None:
            state, reused = self.ctx.feature_cache.get_or_compute(
                self._trained_key(train), train_now, keep_in_memory=False
            )
            self._load_trained_state(state["state_dict"])
            info = dict(state["info"])
        else:
            info, reused = train_now()["info"], False
        info["reused_trained_model"] = reused
        self.calibrate(val)
        info["quantiles"] = dict(self.quantiles)
        return info

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def calibrate(self, val: ImageSet) -> None:
        """Quantiles q_alpha, q_beta of the pooled validation maps, per branch (Section 3.5).

        Exact quantiles (numpy, linear interpolation) over every pixel of every upsampled and
        (``quantiles_on=blurred``, the authors' code) blurred validation map; the authors
        subsample to 2^24 values for ``torch.quantile``.
        """
        self.eval()
        net = self.net
        features = self.features(val)
        local_maps, global_maps = [], []
        for idx, images in val.batches(self.feature_batch_size):
            local, global_ = net.raw_maps(net.standardize(features[idx]), self._to_device(images))
            for raw, pooled in ((local, local_maps), (global_, global_maps)):
                upsampled = net.upsample(raw)
                if self.quantiles_on == "blurred":
                    upsampled = net.blur(upsampled[:, None])[:, 0]
                pooled.append(upsampled.cpu().numpy().ravel())
        values = {}
        for name, maps in (("local", local_maps), ("global", global_maps)):
            pooled = np.concatenate(maps).astype(np.float64)
            q_alpha, q_beta = np.quantile(pooled, [self.alpha, self.beta])
            values[f"{name}_alpha"], values[f"{name}_beta"] = float(q_alpha), float(q_beta)
        net.set_quantiles(values)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        """M = (t_l(M_l) + t_g(M_g)) / 2, blurred; score = max of M (Section 3.5):
        :meth:`UlsadModel.forward <.torch_model.UlsadModel.forward>`."""
        maps, scores, extras = self.net(self._to_device(images))
        return Prediction(maps=maps, scores=scores, extras=extras)

    def inference_modules(self) -> list[nn.Module]:
        return [self.net]

    def hyperparameters(self) -> dict[str, Any]:
        """Every setting (``output_relu`` and ``blur_sigma`` as resolved at set-up), the backbone,
        the optimizer and the calibrated quantiles."""
        return {
            "backbone": self.ctx.backbone.name,
            **as_record(self, UlsadSettings),
            "optimizer": "Adam",
            "quantiles": dict(self.quantiles),
        }

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
harness's feature cache and reused by every epoch, seed and job; only the global branch sees
the images during training. A trained model is also cached by everything that determines it
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

import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ...data import ImageSet
from ..base import AnomalyModel, Prediction, RunContext
from ..filters import GaussianBlur
from .losses import REDUCTIONS, attention_map, distance_loss, distance_map
from .networks import FeatureAggregator, FeatureReconstructionNetwork, GlobalAutoencoder

LOSS_PG = ("attention", "l2", "none")
BRANCHES = ("both", "local", "global")
QUANTILES_ON = ("blurred", "upsampled")


def resolve_output_relu(setting: bool | str, weights_kind: str) -> bool:
    """The FRN's output ReLU: ``auto`` keeps it (Table 5, the code) for pretrained weights
    (``imagenet`` or a file) and drops it for random-init backbones, which the paper never used:
    standardised random features are half negative, which a ReLU output cannot reconstruct."""
    if setting == "auto":
        return weights_kind != "random"
    return bool(setting)


class Ulsad(AnomalyModel):
    """Unified Logical and Structural Anomaly Detection (Patra & Ben Taieb, TMLR 2024)."""

    name = "ulsad"
    image_size_multiple = 32  # the global autoencoder's encoder (networks.GlobalAutoencoder)

    def __init__(
        self,
        layers: tuple[str, ...] = ("layer2", "layer3"),
        feature_dim: int = 384,
        architecture: str = "code",
        output_relu: bool | str = "auto",
        lambda_l: float = 0.5,
        lambda_g: float = 0.5,
        magnitude_reduction: str = "mean",
        loss_pg: str = "attention",
        loss_lg: bool = True,
        branch: str = "both",
        alpha: float = 0.9,
        beta: float = 0.995,
        epochs: int = 200,
        batch_size: int = 8,
        lr: float = 2e-4,
        weight_decay: float = 2e-5,
        blur_sigma: float | None = None,
        feature_batch_size: int = 32,
        reuse_trained: bool = True,
        cache_attention_target: bool = True,
        drop_last: bool = True,
        quantiles_on: str = "blurred",
    ) -> None:
        if quantiles_on not in QUANTILES_ON:
            raise ValueError(f"quantiles_on must be one of {QUANTILES_ON}, got {quantiles_on!r}")
        if loss_pg not in LOSS_PG:
            raise ValueError(f"loss_pg must be one of {LOSS_PG}, got {loss_pg!r}")
        if branch not in BRANCHES:
            raise ValueError(f"branch must be one of {BRANCHES}, got {branch!r}")
        if magnitude_reduction not in REDUCTIONS:
            raise ValueError(f"magnitude_reduction must be one of {REDUCTIONS}, got {magnitude_reduction!r}")
        if branch != "local" and loss_pg == "none" and not loss_lg:
            raise ValueError("the global branch is untrained without L_pg and L_lg: set branch=local")
        if not 0 <= alpha < beta <= 1:
            raise ValueError(f"need 0 <= alpha < beta <= 1, got alpha={alpha}, beta={beta}")
        self.layers = list(layers)
        self.feature_dim = int(feature_dim)
        self.architecture = architecture
        if not isinstance(output_relu, bool) and output_relu != "auto":
            raise ValueError(f"output_relu must be true, false or auto, got {output_relu!r}")
        self.output_relu: bool | str = output_relu
        self.lambda_l = float(lambda_l)
        self.lambda_g = float(lambda_g)
        self.reduction = magnitude_reduction
        self.loss_pg = loss_pg
        self.loss_lg = bool(loss_lg)
        self.branch = branch
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.epochs = int(epochs)
        self.batch_size = int(batch_size)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.blur_sigma = None if blur_sigma is None else float(blur_sigma)
        self.feature_batch_size = int(feature_batch_size)
        self.reuse_trained = bool(reuse_trained)
        self.cache_attention_target = bool(cache_attention_target)
        self.drop_last = bool(drop_last)
        self.quantiles_on = quantiles_on
        self.quantiles: dict[str, float] = {}

    # ------------------------------------------------------------------ set-up

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        device = ctx.device
        random_init = ctx.backbone.weights.kind == "random"
        self.output_relu = resolve_output_relu(self.output_relu, ctx.backbone.weights.kind)
        if self.output_relu and random_init:
            logging.getLogger("ulsad_bench").warning(
                "ulsad: output_relu=true with a random-init backbone: the FRN's final ReLU cannot reconstruct "
                "the negative half of standardised random features, so the local branch is near chance; "
                "pass model.output_relu=false (or auto) for a meaningful run on random weights (it is recorded)"
            )
        self.aggregator = FeatureAggregator(ctx.backbone, self.layers, self.feature_dim).to(device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(ctx.seed)
            self.frn = FeatureReconstructionNetwork(self.feature_dim, self.architecture, self.output_relu).to(device)
            self.global_ae = GlobalAutoencoder(ctx.image_size, self.feature_dim, self.architecture).to(device)
        if self.blur_sigma is None:  # the authors' sigma 4 at 256 px, scaled with the image size
            self.blur_sigma = 4.0 * ctx.image_size / 256
        self.blur = GaussianBlur(self.blur_sigma).to(device)
        self.register_stats(torch.zeros(self.feature_dim), torch.ones(self.feature_dim))
        if device.type == "cuda":
            for module in (self.aggregator, self.frn, self.global_ae):
                module.to(memory_format=torch.channels_last)

    def register_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Channel statistics of the training features (Algorithm 1, line 4)."""
        self.feature_mean = mean.view(1, -1, 1, 1).to(self.ctx.device)
        self.feature_std = std.view(1, -1, 1, 1).to(self.ctx.device)

    def _feature_key(self, images: ImageSet) -> dict[str, Any]:
        spec = self.ctx.backbone
        return {
            "what": "ulsad-features",
            "images": images.key,
            "backbone": spec.name,
            "weights": spec.weights.identity,
            "layers": self.layers,
            "channels": self.feature_dim,
            "size": images.size,
        }

    def features(self, images: ImageSet) -> torch.Tensor:
        """Frozen features U of a split, ``[N, c*, S/8, S/8]`` on CPU, computed once (cached)."""

        def compute() -> torch.Tensor:
            chunks = []
            batches = images.batches(self.feature_batch_size)
            total = -(-len(images) // self.feature_batch_size)
            for _, batch in tqdm(
                batches, total=total, desc="ulsad: features", leave=False, disable=not self.ctx.progress
            ):
                with self._autocast():
                    chunks.append(self.aggregator(self._to_device(batch)).float().cpu())
            return torch.cat(chunks)

        return self.ctx.feature_cache.get_or_compute(self._feature_key(images), compute)[0]

    def _to_device(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.ctx.device, non_blocking=True)
        if self.ctx.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def _autocast(self) -> torch.autocast:
        dtype = self.ctx.autocast_dtype
        return torch.autocast(self.ctx.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def _standardize(self, features: torch.Tensor) -> torch.Tensor:
        return (features.to(self.ctx.device) - self.feature_mean) / self.feature_std

    # ------------------------------------------------------------------ training

    def attention_targets(self, features: torch.Tensor) -> torch.Tensor:
        """The self-attention maps A of Eq. 3 for cached features ``[N, c*, h, w]``, computed once.

        A depends only on the frozen, standardised features U, so with the features cached it
        is as fixed as they are; computing it once per training set instead of at every step
        saves a third of a CPU training step at 256 px (one 4096 x 4096 attention per image),
        at the cost of a second tensor the size of the features, kept where they are. The
        values are those of the per-step computation (the same function, batched differently).
        """
        chunks = []
        with torch.no_grad():
            for start in range(0, len(features), self.batch_size):
                u = self._standardize(features[start : start + self.batch_size])
                chunks.append(attention_map(u.float(), u.float()).to(features.device))
        return torch.cat(chunks)

    def _losses(
        self,
        u: torch.Tensor,
        u_tilde: torch.Tensor,
        u_hat: torch.Tensor,
        target: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """L_pl (Eq. 1), L_pg (Eq. 5) or L^d_pg, and L_lg (Eq. 6) for a batch.

        ``target``: the precomputed A of Eq. 3 for the batch (:meth:`attention_targets`); None
        computes it here.
        """
        c = self.feature_dim
        u, u_tilde, u_hat = u.float(), u_tilde.float(), u_hat.float()
        losses = {"pl": distance_loss(u_tilde[:, :c], u, self.lambda_l, self.reduction)}
        if self.loss_pg == "attention":
            if target is None:
                with torch.no_grad():
                    target = attention_map(u, u)  # A = Z W, Eq. 3 (fixed: U is frozen)
            losses["pg"] = distance_loss(attention_map(u_hat, u), target, self.lambda_g, self.reduction)
        elif self.loss_pg == "l2":
            losses["pg"] = distance_loss(u_hat, u, self.lambda_g, self.reduction)
        if self.loss_lg:
            losses["lg"] = distance_loss(u_tilde[:, c:], u_hat, self.lambda_g, self.reduction)
        return losses

    def _train(
        self,
        train: ImageSet,
        features: torch.Tensor | None,
        epochs: int | None = None,
        targets: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        """Algorithm 1. ``features``: the cached U of ``train`` ``[N, c*, h, w]``; with None the
        frozen backbone (and Eq. 3's A) runs again on every batch (only to measure what the
        cache saves). ``targets``: A for ``features`` (:meth:`attention_targets`); computed here
        when None, the features are cached, ``loss_pg=attention`` and
        ``cache_attention_target`` is on."""
        device = self.ctx.device
        epochs = self.epochs if epochs is None else epochs
        self.frn.train()
        self.global_ae.train()
        parameters = [*self.frn.parameters(), *self.global_ae.parameters()]
        optimizer = torch.optim.Adam(parameters, lr=self.lr, weight_decay=self.weight_decay)
        images = train.images.to(device) if device.type == "cuda" else train.images
        if features is not None and device.type == "cuda":
            features = features.to(device)
        if targets is None and features is not None and self.loss_pg == "attention" and self.cache_attention_target:
            targets = self.attention_targets(features)
        generator = torch.Generator().manual_seed(self.ctx.seed)
        # The authors' loader drops the last partial batch (drop_last=True); a batch of one would
        # also break the batch norm of the global autoencoder's 1 x 1 bottleneck.
        usable = len(train) - (len(train) % self.batch_size if self.drop_last else 0)
        if usable == 0:
            raise ValueError(
                f"ULSAD: {len(train)} training images are fewer than model.batch_size={self.batch_size} with "
                "model.drop_last=true: no full batch to train on; lower model.batch_size"
            )
        history: list[dict[str, float]] = []
        bar = tqdm(range(epochs), desc="ulsad: train", leave=False, disable=not self.ctx.progress)
        for epoch in bar:
            sums: dict[str, float] = {}
            steps = 0
            order = torch.randperm(len(train), generator=generator)
            for start in range(0, usable, self.batch_size):
                batch_idx = order[start : start + self.batch_size]
                x = self._to_device(images[batch_idx.to(images.device)].float().div_(255.0))
                if features is None:
                    with self._autocast():
                        u = self._standardize(self.aggregator(x).float())
                else:
                    u = self._standardize(features[batch_idx.to(features.device)])
                with self._autocast():
                    u_tilde = self.frn(u)
                    u_hat = self.global_ae(x)
                target = None if targets is None else targets[batch_idx.to(targets.device)].to(device)
                losses = self._losses(u, u_tilde, u_hat, target)
                total = sum(losses.values())
                if not torch.isfinite(total):
                    raise FloatingPointError(
                        f"ULSAD loss became {total.item()} at epoch {epoch + 1}, step {steps + 1} "
                        f"(lr {self.lr}, batch size {self.batch_size}): stopping instead of training on NaN"
                    )
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                steps += 1
                for name, value in losses.items():
                    sums[name] = sums.get(name, 0.0) + float(value.detach())
                sums["total"] = sums.get("total", 0.0) + float(total.detach())
            history.append({name: value / steps for name, value in sums.items()})
            bar.set_postfix(loss=f"{history[-1]['total']:.4f}")
        return {
            "epochs": epochs,
            "loss_first_epoch": history[0],
            "loss_last_epoch": history[-1],
            "loss_total_per_epoch": [round(h["total"], 6) for h in history],
        }

    def _trained_key(self, train: ImageSet) -> dict[str, Any]:
        return {
            **self._feature_key(train),
            "what": "ulsad-trained",
            "seed": self.ctx.seed,
            "device": self.ctx.device.type,
            "precision": self.ctx.precision,
            "image_size": self.ctx.image_size,
            **{
                k: getattr(self, k)
                for k in (
                    "architecture",
                    "output_relu",
                    "lambda_l",
                    "lambda_g",
                    "reduction",
                    "loss_pg",
                    "loss_lg",
                    "epochs",
                    "batch_size",
                    "drop_last",
                    "lr",
                    "weight_decay",
                )
            },
        }

    def fit(self, train: ImageSet, val: ImageSet) -> dict[str, Any]:
        features = self.features(train)
        mean = features.double().mean(dim=(0, 2, 3))
        std = features.double().std(dim=(0, 2, 3), correction=0)
        std = torch.where(std > 1e-6, std, torch.ones_like(std))  # guard dead channels (random backbones)
        self.register_stats(mean.float(), std.float())

        def train_now() -> dict[str, Any]:
            info = self._train(train, features)
            return {"frn": self.frn.state_dict(), "global_ae": self.global_ae.state_dict(), "info": info}

        if self.reuse_trained:
            state, reused = self.ctx.feature_cache.get_or_compute(
                self._trained_key(train), train_now, keep_in_memory=False
            )
            self.frn.load_state_dict(state["frn"])
            self.global_ae.load_state_dict(state["global_ae"])
            info = dict(state["info"])
        else:
            info, reused = train_now()["info"], False
        info["reused_trained_model"] = reused
        self.calibrate(val)
        info["quantiles"] = dict(self.quantiles)
        return info

    # ------------------------------------------------------------------ inference

    def eval(self) -> None:
        self.frn.eval()
        self.global_ae.eval()

    def raw_maps(self, u: torch.Tensor, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """M_l (Eq. 7) and M_g (Eq. 8) at feature resolution, ``[B, h, w]`` each.

        Args:
            u: standardised features ``[B, c*, h, w]`` on the device.
            images: ``[B, 3, S, S]`` in [0, 1] on the device.
        """
        c = self.feature_dim
        with self._autocast():
            u_tilde = self.frn(u)
            u_hat = self.global_ae(images) if self.branch != "local" else None
        u, u_tilde = u.float(), u_tilde.float()
        local = distance_map(u_tilde[:, :c], u, self.lambda_l, self.reduction)
        if u_hat is None:
            return local, torch.zeros_like(local)
        u_hat = u_hat.float()
        if self.loss_lg:
            global_ = distance_map(u_tilde[:, c:], u_hat, self.lambda_g, self.reduction)  # Eq. 8
        elif self.loss_pg == "attention":
            global_ = distance_map(attention_map(u_hat, u), attention_map(u, u), self.lambda_g, self.reduction)
        else:
            global_ = distance_map(u_hat, u, self.lambda_g, self.reduction)
        return local, global_

    def _upsample(self, maps: torch.Tensor) -> torch.Tensor:
        size = (self.ctx.image_size, self.ctx.image_size)
        return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]

    @torch.no_grad()
    def calibrate(self, val: ImageSet) -> None:
        """Quantiles q_alpha, q_beta of the pooled validation maps, per branch (Section 3.5).

        Exact quantiles (numpy, linear interpolation) over every pixel of every upsampled and
        (``quantiles_on=blurred``, the authors' code) blurred validation map; the authors
        subsample to 2^24 values for ``torch.quantile``.
        """
        self.eval()
        features = self.features(val)
        local_maps, global_maps = [], []
        for idx, images in val.batches(self.feature_batch_size):
            local, global_ = self.raw_maps(self._standardize(features[idx]), self._to_device(images))
            for raw, pooled in ((local, local_maps), (global_, global_maps)):
                upsampled = self._upsample(raw)
                if self.quantiles_on == "blurred":
                    upsampled = self.blur(upsampled[:, None])[:, 0]
                pooled.append(upsampled.cpu().numpy().ravel())
        for name, maps in (("local", local_maps), ("global", global_maps)):
            pooled = np.concatenate(maps).astype(np.float64)
            q_alpha, q_beta = np.quantile(pooled, [self.alpha, self.beta])
            self.quantiles[f"{name}_alpha"] = float(q_alpha)
            self.quantiles[f"{name}_beta"] = float(q_beta)

    def _normalise(self, maps: torch.Tensor, name: str) -> torch.Tensor:
        """t(M) = 0.1 (M - q_alpha) / (q_beta - q_alpha) (Section 3.5)."""
        q_alpha, q_beta = self.quantiles[f"{name}_alpha"], self.quantiles[f"{name}_beta"]
        return 0.1 * (maps - q_alpha) / max(q_beta - q_alpha, 1e-12)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        """M = (t_l(M_l) + t_g(M_g)) / 2, blurred; score = max of M (Section 3.5)."""
        images = self._to_device(images)
        with self._autocast():
            features = self.aggregator(images)
        local, global_ = self.raw_maps(self._standardize(features.float()), images)
        maps = {}
        for name, raw in (("local", local), ("global", global_)):
            normalised = self._normalise(self._upsample(raw), name)
            maps[name] = self.blur(normalised[:, None])[:, 0]
        combined = {"both": (maps["local"] + maps["global"]) / 2, "local": maps["local"], "global": maps["global"]}
        final = combined[self.branch]
        extras = {"local": maps["local"]} if self.branch == "local" else maps
        return Prediction(maps=final, scores=final.amax(dim=(-2, -1)), extras=extras)

    def inference_modules(self) -> list[nn.Module]:
        return [self.aggregator, self.frn, self.global_ae]

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "backbone": self.ctx.backbone.name,
            "layers": self.layers,
            "feature_dim": self.feature_dim,
            "architecture": self.architecture,
            "output_relu": self.output_relu,
            "lambda_l": self.lambda_l,
            "lambda_g": self.lambda_g,
            "magnitude_reduction": self.reduction,
            "loss_pg": self.loss_pg,
            "loss_lg": self.loss_lg,
            "branch": self.branch,
            "alpha": self.alpha,
            "beta": self.beta,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "optimizer": "Adam",
            "blur_sigma": self.blur_sigma,
            "drop_last": self.drop_last,
            "quantiles_on": self.quantiles_on,
            "quantiles": dict(self.quantiles),
        }

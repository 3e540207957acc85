"""DFR: regional features against the authors' chain, CAE, PCA width, training, caching, detection."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from sklearn.decomposition import PCA
from torch import nn

from ulsad_bench import runner
from ulsad_bench.features import FeatureCache
from ulsad_bench.models.backbone import BackboneSpec, Normalize, resolve_weights
from ulsad_bench.models.dfr import Dfr, DfrModel, torch_model
from ulsad_bench.models.dfr.model import pca_latent_dim
from ulsad_bench.models.dfr.torch_model import (
    DFR_LAYERS,
    VGG19_RELUS,
    FeatCAE,
    RegionalFeatures,
    reconstruction_error,
    resize_pool_matrix,
    vgg19_plan,
)
from ulsad_bench.spec import JobSpec

RANDOM_VGG = BackboneSpec("vgg19", resolve_weights("vgg19", "random"))
# Plumbing runs: DFR's first two VGG levels only (384 channels), profiling off.
SMALL_DFR = ["model=dfr", "model.layers=[relu1_1,relu1_2,relu2_1,relu2_2]", "profile.enabled=false"]


# ----------------------------------------------------------------------------- features


def _dfr_chain(features: RegionalFeatures, images: torch.Tensor) -> torch.Tensor:
    """DFR's code written out: vgg19.py (reflection pad before every conv, padded maps
    returned), then feature.py (bilinear resize with align_corners, 4 x 4 / 4 average)."""
    body = features.extractor.body
    h, out = Normalize()(images), {}
    names = {node: name for name, node in VGG19_RELUS.items()}
    for i in range(27):  # up to relu4_4
        layer = body.get_submodule(f"features.{i}")
        if isinstance(layer, nn.Conv2d):
            h = F.conv2d(F.pad(h, (1, 1, 1, 1), mode="reflect"), layer.weight, layer.bias)
        elif isinstance(layer, nn.ReLU):
            h = F.relu(h)
            feeds_conv = vgg19_plan()[i + 1][0] == "conv"
            out[names[f"features.{i}"]] = F.pad(h, (1, 1, 1, 1), mode="reflect") if feeds_conv else h
        else:
            h = layer(h)
    size = images.shape[-1]
    pooled = [
        F.avg_pool2d(F.interpolate(out[n], size=size, mode="bilinear", align_corners=True), 4, 4) for n in DFR_LAYERS
    ]
    return torch.cat(pooled, dim=1)


def test_regional_features_equal_the_authors_chain() -> None:
    features = RegionalFeatures(RANDOM_VGG, list(DFR_LAYERS), image_size=32)
    images = torch.rand(2, 3, 32, 32)
    out = features(images)
    assert features.feature_dim == 3456 and out.shape == (2, 3456, 8, 8)  # 64*2 + 128*2 + 256*4 + 512*4, S / 4
    assert features.nodes[0] == "features.1" and features.nodes[-1] == "features.26"
    torch.testing.assert_close(out, _dfr_chain(features, images), rtol=1e-4, atol=1e-5)


def test_inference_tensors_are_buffers_and_the_model_maps_images(monkeypatch) -> None:
    features = RegionalFeatures(RANDOM_VGG, ["relu1_1", "relu2_2", "relu4_4"], image_size=32)
    buffers = dict(features.named_buffers())
    for node, map_size in zip(features.nodes, (32, 16, 4), strict=True):  # relu4_4 after 3 poolings
        assert buffers["matrix_" + node.replace(".", "_")].shape == (8, map_size)
    images = torch.rand(2, 3, 32, 32)
    expected = features(images)
    # at image_size the buffers are all forward uses; another size builds its matrices per call
    assert features(torch.rand(1, 3, 48, 48)).shape == (1, features.feature_dim, 8, 8)

    def refuse(*args, **kwargs):
        raise AssertionError("matrix built outside the buffers")

    monkeypatch.setattr(torch_model, "resize_pool_matrix", refuse)
    torch.testing.assert_close(features(images), expected, rtol=0, atol=0)
    model = DfrModel(features, FeatCAE(features.feature_dim, 4)).eval()
    with torch.no_grad():
        maps, scores = model(images)
    assert maps.shape == (2, 32, 32) and torch.equal(scores, maps.amax(dim=(-2, -1)))


@pytest.mark.parametrize(
    ("kernel_size", "stride", "upsample"), [(4, 4, "bilinear"), (6, 4, "bilinear"), (4, 2, "nearest")]
)
def test_resize_pool_matrix_is_the_2d_chain(kernel_size: int, stride: int, upsample: str) -> None:
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    m = resize_pool_matrix(9, 24, kernel_size, stride, upsample)
    pad = (kernel_size - stride) // 2
    ref = F.interpolate(x, size=24, mode=upsample, align_corners=True if upsample == "bilinear" else None)
    ref = F.avg_pool2d(F.pad(ref, (pad,) * 4, mode="replicate"), kernel_size, stride)
    torch.testing.assert_close(m @ x @ m.T, ref)


# ----------------------------------------------------------------------------- CAE and PCA


def test_cae_widths_and_shapes() -> None:
    cae = FeatCAE(100, 7)
    convs = [m for m in cae.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (100, 57), (57, 14), (14, 7), (7, 14), (14, 57), (57, 100)  # (C + 2d) // 2 = 57
    ]  # fmt: skip
    assert sum(isinstance(m, nn.BatchNorm2d) for m in cae.modules()) == 4
    assert isinstance(cae.encoder[-1], nn.Conv2d) and isinstance(cae.decoder[-1], nn.Conv2d)
    x = torch.randn(3, 100, 5, 6)
    y = cae(x)
    assert y.shape == x.shape
    assert reconstruction_error(x, y).shape == (3, 5, 6)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in FeatCAE(100, 7, batch_norm=False).modules()) == 0


def test_pca_width_on_a_known_rank_set() -> None:
    generator = torch.Generator().manual_seed(0)
    n, dim = 400, 64
    basis, _ = torch.linalg.qr(torch.randn(dim, 5, generator=generator, dtype=torch.float64))
    scores = torch.randn(n, 5, generator=generator, dtype=torch.float64)
    scores, _ = torch.linalg.qr(scores - scores.mean(0))  # orthonormal, centred columns
    variances = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0], dtype=torch.float64)  # ratios 1/3 .. 1/15
    x = (scores * variances.sqrt()) @ basis.T + 3.0  # rank 5 around an offset; cumsum 0.33 0.6 0.8 0.93 1
    for ratio, expected in [(0.3, 1), (0.5, 2), (0.7, 3), (0.9, 4), (0.95, 5), (0.999, 5)]:
        assert pca_latent_dim(x, ratio) == expected
    # the rule of sklearn's PCA(n_components=0.9), which DFR's code calls
    noisy = torch.randn(300, 40, generator=generator, dtype=torch.float64) * torch.linspace(3, 0.1, 40)
    assert pca_latent_dim(noisy, 0.9) == PCA(n_components=0.9).fit(noisy.numpy()).n_components_
    few = noisy[:25]  # fewer vectors than channels: the other Gram matrix
    assert pca_latent_dim(few, 0.9) == PCA(n_components=0.9).fit(few.numpy()).n_components_


def test_config_errors_are_refused() -> None:
    with pytest.raises(ValueError, match="vgg19"):
        Dfr(backbone="resnet18")
    with pytest.raises(ValueError, match="unknown VGG19 layers"):
        RegionalFeatures(RANDOM_VGG, ["relu9_9"], image_size=32)


# ----------------------------------------------------------------------------- training and caching


def _fitted(tiny_cfg, cache: FeatureCache | None, *overrides: str) -> tuple[Dfr, dict]:
    """A DFR built from the real config and fitted on the tiny train split (no predictions)."""
    job = runner.prepare(JobSpec.from_config(tiny_cfg(*SMALL_DFR, *overrides)))
    model = job.model
    assert isinstance(model, Dfr)
    if cache is not None:
        model.ctx.feature_cache = cache
    return model, model.fit(job.train, job.val)


def test_loss_decreases_and_on_the_fly_equals_cached(tiny_cfg) -> None:
    model, cached = _fitted(tiny_cfg, None, "model.epochs=4", "model.cache_dtype=float32", "model.latent_dim=16")
    losses = cached["loss_per_epoch"]
    assert len(losses) == 4 and losses[-1] < 0.8 * losses[0]
    assert all(b < a for a, b in itertools.pairwise(losses))
    model.max_cache_gb = 0.0  # the authors' way: the backbone runs on every batch of every epoch
    spec = JobSpec.from_config(tiny_cfg(*SMALL_DFR))
    train, val, _ = runner.load_data(spec, spec.data.splits())
    fly = model.fit(train, val)
    assert (cached["features"], fly["features"]) == ("cached", "on_the_fly")
    assert fly["loss_per_epoch"] == pytest.approx(losses, rel=1e-4)  # same init, same batches, same features
    assert model.hyperparameters()["latent_dim"] == 16 and model.hyperparameters()["latent_dim_source"] == "config"
    assert model.inference_modules() == [model.model] and isinstance(model.model, DfrModel)  # all predict uses


def test_second_seed_reuses_the_frozen_features(tiny_cfg, tmp_path, monkeypatch) -> None:
    seen = {"images": 0}
    original = RegionalFeatures.forward

    def counting(self, images):
        seen["images"] += images.shape[0]
        return original(self, images)

    monkeypatch.setattr(RegionalFeatures, "forward", counting)
    cache = FeatureCache(tmp_path / "features")
    FeatureCache.clear_memory()
    _, first = _fitted(tiny_cfg, cache, "model.epochs=1", "seed=21")
    assert (cache.misses, cache.hits) == (1, 0) and seen["images"] == first["train_images"]
    FeatureCache.clear_memory()  # as for a separate job: from the disk cache
    _, second = _fitted(tiny_cfg, cache, "model.epochs=1", "seed=22")
    assert (cache.misses, cache.hits) == (1, 1) and seen["images"] == first["train_images"]  # no backbone call
    assert first["features_reused"] is False and second["features_reused"] is True
    assert second["latent_dim"] == first["latent_dim"]  # PCA depends on the data, not the seed
    assert second["loss_per_epoch"] != first["loss_per_epoch"]  # another seed: another init and order


# ----------------------------------------------------------------------------- it detects


def test_detects_structural_anomalies_and_records_layers_and_width(tiny_cfg, tmp_path) -> None:
    cfg = tiny_cfg("model=dfr", "model.epochs=2", "dataset.category=texture", "profile.enabled=false")
    record = runner.run(cfg, tmp_path / "run")
    assert record["status"] == "ok", record.get("error")
    print(f"\nDFR synthetic texture 64 px, 2 epochs: {record['metrics']}, latent {record['fit']['latent_dim']}")
    assert record["metrics"]["image_auroc"] > 0.9
    assert record["metrics"]["pixel_auroc"] > 0.9
    hp = record["hyperparameters"]
    assert hp["layers"] == list(DFR_LAYERS) and hp["channels"] == 3456 and hp["feature_size"] == 16
    assert hp["latent_dim_source"] == "pca" and hp["latent_dim"] == record["fit"]["latent_dim"] > 0
    assert hp["variance_ratio"] == 0.9 and hp["epochs"] == 2 and hp["batch_size"] == 4 and hp["lr"] == 1e-4
    # DFR's own backbone is what the record names, whatever backbone= says (resnet18 here)
    assert record["backbone"] == "vgg19" and record["weights"] == {"policy": "random", "random_init_seed": 0}


def test_bf16_job_runs_under_the_precision_policy(tiny_cfg, tmp_path) -> None:
    """``precision=bf16`` is DFR's mixed-precision policy (tests/test_precision.py), no longer refused;
    features extracted under it are cached apart from fp32 ones."""
    record = runner.run(tiny_cfg(*SMALL_DFR, "model.epochs=1", "precision=bf16"), tmp_path / "run")
    assert record["status"] == "ok", record.get("error")
    assert record["precision"] == "bf16" and record["fit"]["features"] == "cached"
    job = runner.prepare(JobSpec.from_config(tiny_cfg(*SMALL_DFR)))
    bf16 = runner.prepare(JobSpec.from_config(tiny_cfg(*SMALL_DFR, "precision=bf16")))
    assert job.model._feature_key(job.train) != bf16.model._feature_key(bf16.train)

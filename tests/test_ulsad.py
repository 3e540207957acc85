"""ULSAD: equations on random tensors, networks, training, caching, and that it detects."""

from __future__ import annotations

import math

import pytest
import torch

from ulsad_bench import runner
from ulsad_bench.features import FeatureCache
from ulsad_bench.models.filters import GaussianBlur
from ulsad_bench.models.ulsad import Ulsad
from ulsad_bench.models.ulsad.losses import (
    attention_map,
    attention_targets,
    direction,
    distance_loss,
    distance_map,
    magnitude,
)
from ulsad_bench.models.ulsad.model import resolve_output_relu
from ulsad_bench.models.ulsad.torch_model import FeatureAggregator, FeatureReconstructionNetwork, GlobalAutoencoder

# A small ULSAD: c* = 32 at 64 px (feature maps 8 x 8), for plumbing tests.
TINY_ULSAD = [
    "model=ulsad",
    "profile.enabled=false",
    "model.feature_dim=32",
    "model.epochs=3",
    "model.batch_size=4",
    "model.blur_sigma=1",
    "model.output_relu=false",
]


# ----------------------------------------------------------------------------- equations


def test_each_loss_is_zero_when_prediction_equals_target() -> None:
    z = torch.randn(2, 16, 4, 4)
    assert distance_loss(z, z, 0.5) == pytest.approx(0.0, abs=1e-6)  # Eqs. 1, 5, 6
    a = attention_map(z, z)
    assert distance_loss(attention_map(z.clone(), z), a, 0.5) == pytest.approx(0.0, abs=1e-6)  # Eq. 5
    assert distance_map(z, z, 0.5).abs().max() < 1e-6  # Eqs. 7, 8


def test_cosine_term_is_scale_invariant_and_magnitude_is_not() -> None:
    a, b = torch.randn(2, 16, 4, 4), torch.randn(2, 16, 4, 4)
    torch.testing.assert_close(direction(3.0 * a, b), direction(a, b), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(magnitude(3.0 * a, b), magnitude(a, b))
    torch.testing.assert_close(direction(a, 2.0 * a), torch.zeros(2, 4, 4), atol=1e-6, rtol=0)


def test_magnitude_reduction_mean_vs_sum() -> None:
    a, b = torch.randn(1, 16, 3, 3), torch.randn(1, 16, 3, 3)
    torch.testing.assert_close(magnitude(a, b, "sum"), 16 * magnitude(a, b, "mean"))
    expected = ((a - b) ** 2).sum(1) + 0.5 * (1 - torch.nn.functional.cosine_similarity(a, b, dim=1))
    torch.testing.assert_close(distance_map(a, b, 0.5, "sum"), expected)


def test_attention_matches_equations_3_and_4() -> None:
    c, h, w = 8, 3, 4
    z = torch.randn(1, c, h, w)
    z_hat = torch.randn(1, c, h, w)
    zm, zhm = z[0].reshape(c, -1), z_hat[0].reshape(c, -1)  # f(U): c* x k*
    k = zm.shape[1]
    for query, expected_name in ((zm, "A"), (zhm, "A^")):
        weights = torch.empty(k, k)  # W[p, q] = exp(z_p . q_q / sqrt c) / sum_k exp(z_k . q_q / sqrt c)
        for q in range(k):
            logits = torch.stack([zm[:, p] @ query[:, q] for p in range(k)]) / math.sqrt(c)
            weights[:, q] = torch.softmax(logits, dim=0)
        expected = (zm @ weights).reshape(1, c, h, w)  # A = Z W
        got = attention_map(z if expected_name == "A" else z_hat, z)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_separable_blur_equals_anomalibs_gaussian_blur() -> None:
    from anomalib.models.components import GaussianBlur2d

    maps = torch.rand(2, 1, 64, 64)
    reference = GaussianBlur2d(sigma=4.0, channels=1, kernel_size=33)(maps)
    torch.testing.assert_close(GaussianBlur(4.0)(maps), reference, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- networks


@pytest.mark.parametrize("architecture", ["paper", "code"])
@pytest.mark.parametrize("size", [64, 128, 256])
def test_network_shapes(size: int, architecture: str) -> None:
    c = 16
    frn = FeatureReconstructionNetwork(c, architecture)
    ae = GlobalAutoencoder(size, c, architecture)
    u = torch.randn(2, c, size // 8, size // 8)
    assert frn(u).shape == (2, 2 * c, size // 8, size // 8)  # doubled output: U' and U''
    assert ae(torch.rand(2, 3, size, size)).shape == (2, c, size // 8, size // 8)


def test_paper_table_widths() -> None:
    frn = FeatureReconstructionNetwork(384)
    assert [m.out_channels for m in (frn.conv1, frn.conv2, frn.conv3, frn.deconv1, frn.deconv2, frn.deconv3)] == [
        768,
        1536,
        1536,
        768,
        384,
        768,
    ]  # Table 5 (last layer doubled, Section 3.2)
    ae = GlobalAutoencoder(256, 384, "paper")
    assert [conv.out_channels for conv in ae.encoder] == [32, 32, 64, 64, 64, 64]  # Table 6
    assert ae.encoder[-1].kernel_size == (8, 8) and ae.encoder[-1].padding == (1, 1)
    assert GlobalAutoencoder(256, 384, "code").encoder[-1].padding == (0, 0)
    with pytest.raises(ValueError, match="divisible by 32"):
        GlobalAutoencoder(100)


def test_feature_aggregator_pools_channels_to_c_star() -> None:
    from ulsad_bench.models.backbone import BackboneSpec, resolve_weights

    spec = BackboneSpec("resnet18", resolve_weights("resnet18", "random"))
    aggregator = FeatureAggregator(spec, ["layer2", "layer3"], 64)
    features = aggregator(torch.rand(2, 3, 64, 64))
    assert features.shape == (2, 64, 8, 8)
    raw = aggregator.extractor(torch.rand(1, 3, 64, 64))
    assert raw["layer2"].shape[1] + raw["layer3"].shape[1] == 384  # 384 -> 64: groups of 6 averaged


def test_invalid_ablation_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="untrained"):
        Ulsad(loss_pg="none", loss_lg=False, branch="both")
    with pytest.raises(ValueError, match="alpha"):
        Ulsad(alpha=0.99, beta=0.9)
    with pytest.raises(ValueError, match="loss_pg"):
        Ulsad(loss_pg="cosine")


# ----------------------------------------------------------------------------- training and caching


def test_training_lowers_the_loss_and_records_settings(tiny_cfg, tmp_path) -> None:
    record = runner.run(tiny_cfg(*TINY_ULSAD, "model.epochs=6", "dataset.category=texture"), tmp_path / "run")
    assert record["status"] == "ok", record.get("error")
    losses = record["fit"]["loss_total_per_epoch"]
    assert losses[-1] < losses[0]
    assert set(record["fit"]["loss_last_epoch"]) == {"pl", "pg", "lg", "total"}
    hp = record["hyperparameters"]
    assert hp["lambda_l"] == 0.5 and hp["loss_pg"] == "attention" and hp["output_relu"] is False
    q = record["fit"]["quantiles"]
    assert q["local_alpha"] < q["local_beta"] and q["global_alpha"] < q["global_beta"]


def test_ablation_switches_change_the_losses() -> None:
    model = Ulsad(feature_dim=8, loss_pg="l2", loss_lg=False)
    u, u_tilde, u_hat = torch.randn(2, 8, 4, 4), torch.randn(2, 16, 4, 4), torch.randn(2, 8, 4, 4)
    losses = model.loss(u, u_tilde, u_hat)
    assert set(losses) == {"pl", "pg"}
    assert losses["pg"] == pytest.approx(float(distance_loss(u_hat, u, 0.5)))  # L^d_pg: U^ against U
    assert set(Ulsad(feature_dim=8, loss_pg="none", branch="local", loss_lg=False).loss(u, u_tilde, u_hat)) == {"pl"}
    full = Ulsad(feature_dim=8).loss(u, u_tilde, u_hat)
    assert full["lg"] == pytest.approx(float(distance_loss(u_tilde[:, 8:], u_hat, 0.5)))  # Eq. 6 uses U''


def test_same_seed_gives_identical_metrics(tiny_cfg, tmp_path) -> None:
    cfg = tiny_cfg(*TINY_ULSAD, "model.reuse_trained=false", "seed=7")
    first = runner.run(cfg, tmp_path / "a")
    second = runner.run(cfg, tmp_path / "b")
    assert first["status"] == "ok", first.get("error")
    assert first["metrics"] == second["metrics"] and first["metrics_by_kind"] == second["metrics_by_kind"]


def test_output_relu_auto_follows_the_paper_for_pretrained_weights(tiny_cfg, tmp_path) -> None:
    assert resolve_output_relu("auto", "imagenet") is True and resolve_output_relu("auto", "file") is True
    assert resolve_output_relu("auto", "random") is False
    assert resolve_output_relu(True, "random") is True and resolve_output_relu(False, "imagenet") is False
    with pytest.raises(ValueError, match="output_relu"):
        Ulsad(output_relu="sometimes")
    cfg = tiny_cfg(*[o for o in TINY_ULSAD if "output_relu" not in o], "model.epochs=1")
    record = runner.run(cfg, tmp_path / "auto")
    assert record["status"] == "ok", record.get("error")
    assert record["hyperparameters"]["output_relu"] is False  # resolved value in the record


def test_precomputed_attention_targets_train_as_per_step_ones(tiny_cfg, tmp_path) -> None:
    """Eq. 3's A computed once from the cached features gives the training of the per-step A."""
    losses = {}
    for cached in ("true", "false"):
        cfg = tiny_cfg(*TINY_ULSAD, "model.reuse_trained=false", f"model.cache_attention_target={cached}")
        record = runner.run(cfg, tmp_path / cached)
        assert record["status"] == "ok", record.get("error")
        losses[cached] = record["fit"]["loss_total_per_epoch"]
    assert losses["true"] == pytest.approx(losses["false"], rel=1e-4)
    mean, std = torch.randn(1, 8, 1, 1), torch.rand(1, 8, 1, 1) + 0.5
    features = torch.randn(7, 8, 4, 4)
    targets = attention_targets(features, lambda f: (f - mean) / std, batch_size=3)  # 3 + 3 + 1
    u = (features - mean) / std
    assert torch.allclose(targets, attention_map(u, u), atol=1e-6)


def test_feature_cache_is_hit_on_the_second_seed(tiny_cfg, tmp_path, monkeypatch) -> None:
    calls = {"n": 0}
    original = FeatureAggregator.forward

    def counting(self, images):
        calls["n"] += images.shape[0]
        return original(self, images)

    monkeypatch.setattr(FeatureAggregator, "forward", counting)
    FeatureCache.clear_memory()
    first = runner.run(tiny_cfg(*TINY_ULSAD, "seed=11", "dataset.category=texture"), tmp_path / "s11")
    after_first = calls["n"]
    FeatureCache.clear_memory()  # prove the disk cache works too, as for a separate job
    second = runner.run(tiny_cfg(*TINY_ULSAD, "seed=12", "dataset.category=texture"), tmp_path / "s12")
    assert first["status"] == second["status"] == "ok"
    n_test = second["data"]["test_normal"] + second["data"]["test_anomalous"]
    assert calls["n"] - after_first == n_test  # only the test images (inference) ran the backbone
    assert second["fit"]["reused_trained_model"] is False  # another seed trains anew

    rescored = runner.run(
        tiny_cfg(*TINY_ULSAD, "seed=12", "dataset.category=texture", "model.alpha=0.5"), tmp_path / "rescored"
    )
    assert rescored["fit"]["reused_trained_model"] is True  # scoring-only change reuses the trained model
    assert rescored["fit"]["loss_total_per_epoch"] == second["fit"]["loss_total_per_epoch"]


# ----------------------------------------------------------------------------- it detects

# The synthetic LOCO-like scene at 128 px with a random ResNet-18, c* = 64 (Section 3's
# networks at a quarter width) and 1000 training steps: small enough for CI.
DETECTION = [
    "model=ulsad",
    "model.feature_dim=64",
    "model.epochs=100",
    "model.output_relu=false",
    "dataset.image_size=128",
    "dataset.synthetic.resolution=128",
    "dataset.synthetic.n_train=80",
    "dataset.synthetic.n_validation=10",
    "dataset.synthetic.n_test_good=12",
    "dataset.synthetic.n_per_defect=4",
    "dataset.category=pinbox",
]


def test_global_branch_adds_logical_detection(tiny_cfg, tmp_path) -> None:
    full = runner.run(tiny_cfg(*DETECTION, "model.branch=both"), tmp_path / "both")
    local = runner.run(tiny_cfg(*DETECTION, "model.branch=local"), tmp_path / "local")
    assert full["status"] == local["status"] == "ok", full.get("error") or local.get("error")
    assert local["fit"]["reused_trained_model"] is True  # the same trained networks, scored two ways
    f, loc = full["metrics_by_kind"], local["metrics_by_kind"]
    print(
        f"\nsynthetic pinbox image AUROC  full ULSAD: logical {f['logical']['image_auroc']:.3f} "
        f"structural {f['structural']['image_auroc']:.3f} | local branch only: logical "
        f"{loc['logical']['image_auroc']:.3f} structural {loc['structural']['image_auroc']:.3f}"
    )
    assert f["logical"]["image_auroc"] >= loc["logical"]["image_auroc"] + 0.05
    assert f["structural"]["image_auroc"] > 0.85
    assert f["logical"]["image_auroc"] > 0.75

"""Offline weights: never downloaded, clear errors, checksums recorded, shared by all models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from ulsad_bench.models.backbone import (
    BackboneSpec,
    FeatureExtractor,
    WeightsNotFoundError,
    build_network,
    load_into,
    resolve_weights,
    sha256_of,
)


def test_missing_imagenet_weights_name_the_file_and_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_weights("resnet18", "imagenet")
    message = str(info.value)
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert "backbone.weights=random" in message


def test_imagenet_weights_read_from_the_torch_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    target = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    target.parent.mkdir(parents=True)
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), target)
    info = resolve_weights("resnet18", "imagenet")
    assert info.kind == "imagenet" and info.file == str(target) and info.sha256 == sha256_of(str(target))
    network = build_network("resnet18", info)
    torch.testing.assert_close(network.conv1.weight, reference.conv1.weight)
    assert not any(p.requires_grad for p in network.parameters())


def test_file_weights_and_wrong_file(tmp_path: Path) -> None:
    path = tmp_path / "my.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    info = resolve_weights("resnet18", str(path))
    assert info.kind == "file" and len(info.sha256 or "") == 64
    with pytest.raises(WeightsNotFoundError, match="neither 'imagenet', 'random' nor an existing file"):
        resolve_weights("resnet18", str(tmp_path / "absent.pth"))
    with pytest.raises(ValueError, match="does not fit resnet50"):
        build_network("resnet50", resolve_weights("resnet50", str(path)))


def test_random_weights_depend_on_their_own_seed_only() -> None:
    torch.manual_seed(123)
    a = build_network("resnet18", resolve_weights("resnet18", "random", 0))
    torch.manual_seed(456)
    b = build_network("resnet18", resolve_weights("resnet18", "random", 0))
    c = build_network("resnet18", resolve_weights("resnet18", "random", 1))
    torch.testing.assert_close(a.conv1.weight, b.conv1.weight)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


def test_feature_extractor_layers_and_frozen() -> None:
    spec = BackboneSpec("resnet18", resolve_weights("resnet18", "random"))
    extractor = FeatureExtractor(spec, ["layer2", "layer3"])
    extractor.train()
    assert not extractor.training
    features = extractor(torch.rand(2, 3, 64, 64))
    assert features["layer2"].shape == (2, 128, 8, 8) and features["layer3"].shape == (2, 256, 4, 4)


def test_timm_extractor_receives_the_shared_weights() -> None:
    import timm

    spec = BackboneSpec("resnet18", resolve_weights("resnet18", "random", 3))
    timm_model = timm.create_model("resnet18", pretrained=False, features_only=True)
    load_into(timm_model, spec)
    torch.testing.assert_close(timm_model.conv1.weight, spec.build().conv1.weight)

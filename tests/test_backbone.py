"""Offline weights: never downloaded, clear errors, checksums recorded, shared by all models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from ulsad_bench.models.backbone import (
    TIMM_DEFAULT,
    BackboneSpec,
    FeatureExtractor,
    WeightsNotFoundError,
    WeightsVerificationError,
    build_network,
    load_into,
    resolve_weights,
    sha256_of,
    weights_dir,
)


def test_missing_imagenet_weights_name_the_timm_file_and_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # not where weights are looked for
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_weights("wide_resnet50_2", "imagenet")
    message = str(info.value)
    assert "wide_resnet50_racm-8234f177.pth is not in " + str(tmp_path / "hub" / "checkpoints") in message
    assert "releases/download/v0.1-weights/wide_resnet50_racm-8234f177.pth" in message
    assert "backbone.weights=random" in message
    with pytest.raises(WeightsNotFoundError, match=r"wide_resnet50_2-95faca4d\.pth"):
        resolve_weights("wide_resnet50_2", "torchvision")
    monkeypatch.delenv("TORCH_HOME")
    assert weights_dir() == Path.home() / ".cache" / "torch" / "hub" / "checkpoints"


def test_imagenet_weights_read_and_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    reference = torchvision.models.resnet18()
    published = folder / "resnet18-5c106cde.pth"  # timm <= 0.6.12's resnet18 file, here with other content
    torch.save(reference.state_dict(), published)
    with pytest.raises(WeightsVerificationError, match=r"is not the published resnet18-5c106cde\.pth"):
        resolve_weights("resnet18", "imagenet")
    unverified = resolve_weights("resnet18", "imagenet", verify=False)
    assert unverified.verified is False and unverified.file == str(published)
    # a file whose content is the published one (here: a name carrying its own hash) is verified
    own = folder / f"resnet18_test-{sha256_of(str(published))[:8]}.pth"
    own.write_bytes(published.read_bytes())
    monkeypatch.setitem(TIMM_DEFAULT, "resnet18", ("resnet18.test", f"https://example.invalid/{own.name}"))
    info = resolve_weights("resnet18", "imagenet")
    assert info.policy == "imagenet" and info.verified is True and info.sha256 == sha256_of(str(own))
    assert "timm resnet18.test" in str(info.source)
    network = build_network("resnet18", info)
    torch.testing.assert_close(network.conv1.weight, reference.conv1.weight)
    assert not any(p.requires_grad for p in network.parameters())


def test_the_timm_table_is_what_timm_loads_by_default() -> None:
    """The files of :data:`TIMM_DEFAULT` are timm's defaults; timm >= 0.9 moved resnet18's to a1_in1k."""
    import timm

    for name, (tag, url) in TIMM_DEFAULT.items():
        cfg = timm.models.get_pretrained_cfg(name)
        if name == "resnet18":
            # timm 0.6.12 (resnet.py L48): torchvision's file as it was then published
            assert cfg.tag == "a1_in1k" and url == "https://download.pytorch.org/models/resnet18-5c106cde.pth"
            continue
        assert f"{name}.{cfg.tag}" == tag and cfg.url == url


def test_file_weights_and_wrong_file(tmp_path: Path) -> None:
    path = tmp_path / "my.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    info = resolve_weights("resnet18", str(path))
    assert info.policy == "file" and len(info.sha256 or "") == 64
    with pytest.raises(WeightsNotFoundError, match="neither 'imagenet', 'torchvision', 'random' nor an existing file"):
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

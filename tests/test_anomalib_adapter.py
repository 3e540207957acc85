"""The anomalib internals :mod:`ulsad_bench.models.anomalib_adapter` relies on, checked on tiny
freshly built torch models (random init, nothing downloaded).

A failure names the internal that changed in the installed anomalib: update the adapter (and
the version its docstring names) before trusting a baseline's results. EfficientAD's full
forward at 256 px runs on the meta device (shapes only), so the whole file stays fast on a CPU.
"""

from __future__ import annotations

import copy
import inspect
import sys
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

import pytest
import torch
from torch import nn

from ulsad_bench.environment import seeded
from ulsad_bench.models import anomalib_adapter as adapter
from ulsad_bench.models.anomalib_adapter import cflow as cflow_adapter
from ulsad_bench.models.anomalib_adapter import draem as draem_adapter
from ulsad_bench.models.anomalib_adapter import fastflow as fastflow_adapter
from ulsad_bench.models.anomalib_adapter import reverse_distillation as rd_adapter
from ulsad_bench.models.backbone import BackboneSpec, load_into, resolve_weights

ANOMALIB = version("anomalib")
CHANNELS = 8  # EfficientAD's teacher channels, small for speed (anomalib: 384)


def expect(condition: bool, what: str) -> None:
    """Fail naming the anomalib internal that is no longer what the adapter expects."""
    if not condition:
        pytest.fail(
            f"anomalib {ANOMALIB} changed an internal ulsad_bench/models/anomalib_adapter/ relies on "
            f"(written against 2.7.0): {what}",
            pytrace=False,
        )


def attribute(path: str) -> Any:
    """``module.path:Name.attr`` -> the object, or a failure naming the missing part."""
    module_name, _, names = path.partition(":")
    try:
        obj: Any = adapter.import_anomalib(module_name)
    except ImportError as err:
        pytest.fail(f"anomalib {ANOMALIB}: module {module_name} is gone ({err}); update the adapter", pytrace=False)
    for name in names.split(".") if names else []:
        expect(hasattr(obj, name), f"{path}: no attribute {name!r}")
        obj = getattr(obj, name)
    return obj


def parameters(func: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(func).parameters)


# ---------------------------------------------------------------------------------------------- names and signatures

# callable -> (the parameters the adapter passes, whether positionally: then their order matters)
SIGNATURES: dict[str, tuple[list[str], bool]] = {
    f"{adapter.PADIM_MODULE}:PadimModel": (["backbone", "layers", "pre_trained", "n_features"], False),
    f"{adapter.PADIM_MODULE}:PadimModel.fit": (["self"], True),
    f"{adapter.PATCHCORE_MODULE}:PatchcoreModel": (["layers", "backbone", "pre_trained", "num_neighbors"], False),
    f"{adapter.PATCHCORE_MODULE}:PatchcoreModel.subsample_embedding": (["self", "sampling_ratio"], True),
    f"{adapter.EFFICIENTAD_MODULE}:EfficientAdModel": (
        ["teacher_out_channels", "model_size", "padding", "pad_maps"],
        False,
    ),
    f"{adapter.EFFICIENTAD_MODULE}:EfficientAdModel.compute_student_teacher_distance": (["self", "batch"], True),
    f"{adapter.EFFICIENTAD_MODULE}:EfficientAdModel._normalize_teacher": (["self", "teacher_output"], True),
    f"{adapter.EFFICIENTAD_MODULE}:EfficientAdModel.choose_random_aug_image": (["image"], True),
    f"{adapter.EFFICIENTAD_MODULE}:EfficientAdModel.get_maps": (["self", "batch", "normalize"], True),
    # EfficientAd.losses re-creates compute_losses: a change here likely changes the loss too
    f"{adapter.EFFICIENTAD_MODULE}:EfficientAdModel.compute_losses": (
        ["self", "batch", "batch_imagenet", "distance_st"],
        True,
    ),
    f"{adapter.EFFICIENTAD_MODULE}:SmallPatchDescriptionNetwork": (["out_channels", "padding"], False),
    f"{adapter.EFFICIENTAD_MODULE}:MediumPatchDescriptionNetwork": (["out_channels", "padding"], False),
    f"{adapter.EFFICIENTAD_MODULE}:AutoEncoder.forward": (["self", "x", "image_size"], True),
    f"{adapter.EFFICIENTAD_MODULE}:reduce_tensor_elems": (["tensor", "m"], True),
    # the four trained here (their adapter modules list what else they rely on; their tests run it)
    f"{cflow_adapter.CFLOW_MODULE}:CflowModel": (
        [
            "backbone",
            "layers",
            "pre_trained",
            "fiber_batch_size",
            "decoder",
            "condition_vector",
            "coupling_blocks",
            "clamp_alpha",
            "permute_soft",
        ],
        False,
    ),
    f"{draem_adapter.PERLIN_MODULE}:PerlinAnomalyGenerator": (
        ["anomaly_source_path", "probability", "blend_factor"],
        False,
    ),
    f"{fastflow_adapter.FASTFLOW_MODULE}:FastflowModel": (
        ["input_size", "backbone", "pre_trained", "flow_steps", "conv3x3_only", "hidden_ratio"],
        False,
    ),
    f"{rd_adapter.RD_MODULE}:ReverseDistillationModel": (
        ["backbone", "input_size", "layers", "anomaly_map_mode", "pre_trained"],
        False,
    ),
}


@pytest.mark.parametrize(("path", "expected"), SIGNATURES.items(), ids=list(SIGNATURES))
def test_signatures(path: str, expected: tuple[list[str], bool]) -> None:
    names, positional = expected
    found = list(parameters(attribute(path)))
    fits = found[: len(names)] == names if positional else set(names) <= set(found)
    expect(fits, f"{path} takes {found}, the adapter passes {names}" + (" in this order" if positional else ""))


def test_module_level_names() -> None:
    sizes = attribute(f"{adapter.EFFICIENTAD_MODULE}:EfficientAdModelSize")
    expect({s.value for s in sizes} >= {"small", "medium"}, f"EfficientAdModelSize values are {list(sizes)}")
    m = parameters(attribute(f"{adapter.EFFICIENTAD_MODULE}:reduce_tensor_elems"))["m"].default
    expect(m == 2**24, f"reduce_tensor_elems samples above m={m}, not 2**24 (EfficientAD's quantiles change)")
    info = attribute(f"{adapter.EFFICIENTAD_LIGHTNING_MODULE}:WEIGHTS_DOWNLOAD_INFO")
    expect(
        getattr(info, "name", "").startswith("efficientad_pretrained_weights") and hasattr(info, "url"),
        f"EfficientAd's WEIGHTS_DOWNLOAD_INFO is {info!r} (the teacher's archive, named in errors)",
    )
    name, url = adapter.teacher_download_info()
    assert name and url.startswith("https://")


def test_coreset_progress_bar_is_the_module_level_tqdm() -> None:
    sampler = adapter.import_anomalib(adapter.CORESET_MODULE)
    expect("tqdm" in vars(sampler), f"{adapter.CORESET_MODULE} has no module-level tqdm to silence")
    source = inspect.getsource(sampler.KCenterGreedy.select_coreset_idxs)
    expect("tqdm(" in source, "KCenterGreedy.select_coreset_idxs no longer iterates with the module's tqdm")


def test_download_helpers_the_guard_replaces() -> None:
    """anomalib's downloads go through ``download_and_extract``; torch.hub's and timm's through the other helpers."""
    lightning = adapter.import_anomalib(adapter.EFFICIENTAD_LIGHTNING_MODULE)
    expect(
        "download_and_extract" in vars(lightning),
        "EfficientAd's lightning_model no longer imports download_and_extract",
    )
    for module, helper in (("torch.hub", "download_url_to_file"), ("timm.models._hub", "hf_hub_download")):
        expect(helper in vars(sys.modules[module]), f"{module} no longer has {helper}")
    original = lightning.download_and_extract
    refused = pytest.raises(adapter.DownloadRefusedError, match="efficientad_pretrained_weights")
    with adapter.no_downloads(), refused:
        lightning.download_and_extract("/nowhere", lightning.WEIGHTS_DOWNLOAD_INFO)
    assert lightning.download_and_extract is original


# ---------------------------------------------------------------------------------------------- PaDiM, PatchCore


def random_resnet18() -> BackboneSpec:
    return BackboneSpec("resnet18", resolve_weights("resnet18", "random"))


def images(count: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


def collect(model: nn.Module, batch: torch.Tensor) -> None:
    adapter.train_with_frozen_backbone(model)
    expect(model.training and not model.feature_extractor.training, "feature_extractor is not the backbone module")
    with torch.no_grad():
        model(batch)


def buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.named_buffers())


def test_padim_internals() -> None:
    with seeded(0):
        model = adapter.build_padim("resnet18", ["layer1", "layer2"], 10)
    network = adapter.timm_network(model)
    expect(isinstance(network, nn.Module), "PadimModel.feature_extractor.feature_extractor is not the timm network")
    load_into(network, random_resnet18())  # parameter names as torchvision's
    collect(model, images(3, 32))
    expect(len(model.memory_bank) == 1, "PadimModel's training forward no longer appends to memory_bank")
    adapter.fit_gaussian(model)
    state = buffers(model)
    for name in ("idx", "gaussian.mean", "gaussian.inv_covariance"):
        expect(name in state and state[name].numel() > 0, f"PadimModel buffer {name} missing or empty after fit()")
    model.eval()
    with torch.no_grad():
        maps, scores = adapter.maps_and_scores(model(images(2, 32, seed=1)))
    expect(maps.shape == (2, 32, 32) and scores.shape == (2,), f"PaDiM output {maps.shape}, {scores.shape}")


def test_patchcore_internals(capfd: pytest.CaptureFixture[str]) -> None:
    model = adapter.build_patchcore("resnet18", ["layer2", "layer3"], num_neighbors=3)
    load_into(adapter.timm_network(model), random_resnet18())
    collect(model, images(2, 32))
    expect(adapter.stored_patches(model) == 2 * 4 * 4, "PatchcoreModel.embedding_store does not hold the patches")
    capfd.readouterr()
    with seeded(0):
        size = adapter.select_coreset(model, 0.25, progress=False)
    expect(capfd.readouterr().err == "", "the coreset selection's progress bar is no longer the one silenced")
    expect(size == 8, f"subsample_embedding(0.25) kept {size} of 32 patches")
    bank = buffers(model).get("memory_bank")
    expect(bank is not None and len(bank) == 8, "PatchcoreModel.memory_bank is not a buffer holding the coreset")
    model.eval()
    with torch.no_grad():
        maps, scores = adapter.maps_and_scores(model(images(2, 32, seed=1)))
    expect(maps.shape == (2, 32, 32) and scores.shape == (2,), f"PatchCore output {maps.shape}, {scores.shape}")


# ---------------------------------------------------------------------------------------------- EfficientAD


@pytest.fixture(scope="module")
def efficientad() -> nn.Module:
    with seeded(0):
        return adapter.build_efficientad("small", CHANNELS, padding=False, pad_maps=True)


def test_efficientad_networks_and_parameters(efficientad: nn.Module) -> None:
    teacher = adapter.efficientad_teacher(efficientad)
    pdn = adapter.build_pdn("small", CHANNELS, padding=False)
    expect(type(teacher) is type(pdn), f"the teacher is a {type(teacher).__name__}, build_pdn makes a {type(pdn)}")
    with torch.device("meta"):
        medium = adapter.build_pdn("medium", CHANNELS, padding=False)
    expect(type(medium).__name__ == "MediumPatchDescriptionNetwork", f"build_pdn('medium') made {type(medium)}")
    trained = {id(p) for p in adapter.trainable_parameters(efficientad)}
    student = {id(p) for p in efficientad.student.parameters()}
    ae = {id(p) for p in efficientad.ae.parameters()}
    expect(trained == student | ae and student and ae, "EfficientAdModel.student / .ae are not the trained networks")
    expect(not trained & {id(p) for p in teacher.parameters()}, "the teacher would be trained")
    expect(efficientad.teacher_out_channels == CHANNELS, "EfficientAdModel.teacher_out_channels missing")


def test_efficientad_statistics_are_parameters(efficientad: nn.Module) -> None:
    """Written into the model's parameter dicts, so they count as its state (profiling)."""
    model = copy.deepcopy(efficientad)
    mean, std = torch.rand(CHANNELS), 1 + torch.rand(CHANNELS)
    adapter.set_teacher_statistics(model, mean, std)
    quantiles = {name: torch.tensor(float(i)) for i, name in enumerate(("qa_st", "qb_st", "qa_ae", "qb_ae"))}
    adapter.set_map_quantiles(model, quantiles)
    state = dict(model.named_parameters())
    written = {"mean_std.mean": mean, "mean_std.std": std, **{f"quantiles.{k}": v for k, v in quantiles.items()}}
    for name, value in written.items():
        expect(name in state, f"EfficientAdModel has no parameter {name}")
        expect(torch.equal(state[name].flatten(), value.flatten()), f"EfficientAdModel.{name} was not written")
        expect(not state[name].requires_grad, f"EfficientAdModel.{name} would be trained")
    expect(state["mean_std.mean"].shape == (1, CHANNELS, 1, 1), f"mean_std.mean is {state['mean_std.mean'].shape}")
    x = images(1, 64)
    with torch.no_grad():
        ours = adapter.standardised_teacher_output(model, x)
        reference = (model.teacher(x) - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    expect(torch.allclose(ours, reference), "_normalize_teacher no longer standardises by mean_std")


def test_efficientad_loss_parts(efficientad: nn.Module) -> None:
    x = images(1, 64)
    with torch.no_grad():
        distance = adapter.student_teacher_distance(efficientad, x)
        first, second = adapter.split_student(efficientad, x)
        expect(first.shape == second.shape == distance.shape, f"student halves {first.shape}, {second.shape}")
        expect(distance.shape[:2] == (1, CHANNELS), f"student-teacher distance is {distance.shape}")
        expect(adapter.reduce_elements(distance).shape == (distance.numel(),), "reduce_tensor_elems does not flatten")
        with seeded(3):
            augmented = adapter.random_augmentation(efficientad, x)
        with seeded(3):
            again = adapter.random_augmentation(efficientad, x)
        expect(torch.equal(augmented, again), "choose_random_aug_image no longer draws from torch's global generator")
        big = images(1, 256)
        ae = adapter.autoencoder_output(efficientad, big, big.shape[-2:])
        teacher_grid = copy.deepcopy(efficientad.teacher).to("meta")(big.to("meta")).shape
    expect(ae.shape == teacher_grid, f"autoencoder output {ae.shape}, teacher output {teacher_grid}")


def test_efficientad_maps_on_meta(efficientad: nn.Module) -> None:
    model = copy.deepcopy(efficientad).to("meta").eval()
    batch = torch.empty(2, 3, 256, 256, device="meta")
    with torch.no_grad():
        map_st, map_ae = adapter.unnormalised_maps(model, batch)
        maps, scores = adapter.maps_and_scores(model(batch))
    expect(map_st.shape == map_ae.shape == (2, 1, 256, 256), f"get_maps gives {map_st.shape}, {map_ae.shape}")
    expect(maps.shape == (2, 256, 256) and scores.shape == (2,), f"EfficientAD output {maps.shape}, {scores.shape}")

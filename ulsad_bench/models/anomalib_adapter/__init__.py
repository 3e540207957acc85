"""Every touch of anomalib: its module paths, the internals of its torch models the harness
relies on, and its side effects (import warnings, downloads, progress bars).

Written against anomalib 2.7.0. ``tests/test_anomalib_adapter.py`` checks each internal listed
below on freshly built tiny models and names the one that changed when anomalib moves it; the
model files (:mod:`.padim`, :mod:`.patchcore`, :mod:`.efficientad`) reach anomalib only
through the functions of this module. CFLOW, DRÆM, FastFlow and Reverse Distillation reach it
through this package's modules of their names (:mod:`.cflow`, :mod:`.draem`, :mod:`.fastflow`,
:mod:`.reverse_distillation`), each listing the internals it relies on; the side-effect guards
below serve them all.

Only anomalib's ``torch_model`` classes are used: no Engine, no Lightning module, no
PreProcessor / PostProcessor / Evaluator / Visualizer. Internals relied on (anomalib 2.7.0):

- ``PadimModel(backbone, layers, pre_trained, n_features)``: ``feature_extractor``
  (``TimmFeatureExtractor``, whose ``feature_extractor`` is the timm network), training-mode
  forward collecting embeddings, ``fit()`` (the Gaussians, buffers of ``gaussian``);
- ``PatchcoreModel(layers, backbone, pre_trained, num_neighbors)``: ``feature_extractor`` as
  PaDiM's, ``embedding_store`` (list of the collected patch embeddings),
  ``subsample_embedding(sampling_ratio)``, the ``memory_bank`` buffer, and the module-level
  ``tqdm`` of ``anomalib.models.components.sampling.k_center_greedy`` (the coreset loop's bar);
- the eval-mode forward of both returning an ``InferenceBatch`` (``anomaly_map``, ``pred_score``);
- ``EfficientAdModel(teacher_out_channels, model_size, padding, pad_maps)``: ``teacher``,
  ``student`` (``2 x teacher_out_channels`` outputs: the teacher's, then the autoencoder's half),
  ``ae(images, image_size)``, the parameter dicts ``mean_std`` (``mean``, ``std``) and
  ``quantiles`` (``qa_st``, ``qb_st``, ``qa_ae``, ``qb_ae``), ``compute_student_teacher_distance``,
  the private ``_normalize_teacher``, ``choose_random_aug_image``, ``get_maps(batch, normalize)``;
  the module's ``EfficientAdModelSize``, ``Small``/``MediumPatchDescriptionNetwork`` and
  ``reduce_tensor_elems``; ``WEIGHTS_DOWNLOAD_INFO`` of its ``lightning_model``.

Side effects, kept off the console and the network:

- :func:`import_anomalib` imports an anomalib module with the FutureWarnings that timm and
  anomalib raise at import time (timm's ``timm.models.layers`` and anomalib's ``dinov2``
  deprecations) silenced, and nothing else.
- :func:`no_downloads` replaces, for the duration of a ``with`` block, every download helper
  that anomalib, timm or torch.hub reach for (``download_and_extract``, ``download_url_to_file``,
  ``hf_hub_download``) with one that raises :class:`DownloadRefusedError` naming the file, its
  URL and the config value that provides it. A missing file is an error at once, never a
  network timeout. anomalib's only downloads in 2.7 are those of its Lightning modules and
  data modules (EfficientAd's teacher and imagenette, datasets) and timm's pretrained weights;
  the harness calls none of them, so the guard is a safety net with a clear message.
- :func:`anomalib_progress` makes anomalib's own ``tqdm`` bar (PatchCore's coreset selection)
  follow the job's ``progress`` setting.

Nothing here writes files: anomalib's torch models create no ``results/`` or ``datasets/``
folders; only its Engine and Lightning modules do.
"""

from __future__ import annotations

import functools
import importlib
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

PADIM_MODULE = "anomalib.models.image.padim.torch_model"
PATCHCORE_MODULE = "anomalib.models.image.patchcore.torch_model"
CORESET_MODULE = "anomalib.models.components.sampling.k_center_greedy"
EFFICIENTAD_MODULE = "anomalib.models.image.efficient_ad.torch_model"
EFFICIENTAD_LIGHTNING_MODULE = "anomalib.models.image.efficient_ad.lightning_model"

#: download helpers replaced inside :func:`no_downloads`, by the name modules import them under
DOWNLOAD_HELPERS = ("download_and_extract", "download_url_to_file", "hf_hub_download")
#: packages whose modules are searched for those helpers
GUARDED_PACKAGES = ("anomalib", "timm", "torch.hub", "torchvision", "huggingface_hub")

#: what a refused file is for, and the config value that provides it instead (by file-name part)
PROVIDE_INSTEAD = {
    "efficientad_pretrained_weights": (
        "the EfficientAD teacher: download it yourself, extract pretrained_teacher_<small|medium>.pth and pass "
        "model.teacher_weights=/path/to/pretrained_teacher_small.pth (or model.teacher_weights=null to distil "
        "a teacher from the configured backbone)"
    ),
    "imagenette": (
        "EfficientAD's penalty images: download and extract it yourself and pass "
        "model.penalty_dir=/path/to/imagenette2 (or model.penalty_dir=null to train without the penalty)"
    ),
}
DEFAULT_PROVIDE_INSTEAD = (
    "backbone weights: the harness never asks anomalib or timm for pretrained weights; they come from "
    "backbone.weights (imagenet from the torch hub cache, or a file)"
)


# ---------------------------------------------------------------------------------------------- side effects


class DownloadRefusedError(RuntimeError):
    """Something tried to download a file at run time; the message names it and what to do."""


def import_anomalib(name: str) -> ModuleType:
    """Import ``name`` (an anomalib module) with timm's and anomalib's import-time FutureWarnings silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"(timm|anomalib)(\.|$)")
        return importlib.import_module(name)


def _describe(helper: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, str, str]:
    """(file name, URL, destination) of a refused download, from the helper's arguments."""
    if helper == "download_and_extract":  # anomalib: (root, DownloadInfo)
        root = args[0] if args else kwargs.get("root")
        info = args[1] if len(args) > 1 else kwargs.get("info")
        return str(getattr(info, "name", info)), str(getattr(info, "url", "?")), str(root)
    if helper == "download_url_to_file":  # torch.hub: (url, dst, ...)
        url = str(args[0] if args else kwargs.get("url"))
        dst = str(args[1] if len(args) > 1 else kwargs.get("dst"))
        return Path(dst).name or url.rsplit("/", 1)[-1], url, dst
    # huggingface_hub: (repo_id, filename, ...)
    repo = str(args[0] if args else kwargs.get("repo_id"))
    filename = str(args[1] if len(args) > 1 else kwargs.get("filename"))
    return f"{repo}/{filename}", f"https://huggingface.co/{repo}", "the Hugging Face cache"


def _refuse(helper: str) -> Callable[..., Any]:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        name, url, destination = _describe(helper, args, kwargs)
        provide = next((hint for key, hint in PROVIDE_INSTEAD.items() if key in name), DEFAULT_PROVIDE_INSTEAD)
        raise DownloadRefusedError(
            f"refused to download {name} from {url} (to {destination}): nothing is downloaded at run time. "
            f"This file is {provide}."
        )

    refuse.__name__ = f"refused_{helper}"
    return refuse


@contextmanager
def no_downloads() -> Iterator[None]:
    """Inside the block, every download helper of anomalib / timm / torch.hub raises :class:`DownloadRefusedError`."""
    patched: list[tuple[ModuleType, str, Any]] = []
    for module_name, module in list(sys.modules.items()):
        if module is None or not any(module_name == p or module_name.startswith(p + ".") for p in GUARDED_PACKAGES):
            continue
        namespace = vars(module)
        for helper in DOWNLOAD_HELPERS:
            original = namespace.get(helper)
            if original is not None and callable(original):
                patched.append((module, helper, original))
                setattr(module, helper, _refuse(helper))
    try:
        yield
    finally:
        for module, helper, original in reversed(patched):
            setattr(module, helper, original)


@contextmanager
def anomalib_progress(module: ModuleType, enabled: bool) -> Iterator[None]:
    """Make ``module.tqdm`` (an anomalib module's progress bar) follow the job's ``progress`` setting."""
    original = vars(module).get("tqdm")
    if original is None:
        yield
        return
    module.tqdm = functools.partial(tqdm, disable=not enabled, leave=False)  # type: ignore[attr-defined]
    try:
        yield
    finally:
        module.tqdm = original  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------- PaDiM, PatchCore


def build_padim(backbone: str, layers: list[str], n_features: int) -> nn.Module:
    """anomalib's ``PadimModel`` without pretrained weights (its random feature subset drawn from torch's generator)."""
    padim = import_anomalib(PADIM_MODULE)
    return padim.PadimModel(backbone=backbone, layers=list(layers), pre_trained=False, n_features=n_features)


def build_patchcore(backbone: str, layers: list[str], num_neighbors: int) -> nn.Module:
    """anomalib's ``PatchcoreModel`` without pretrained weights."""
    patchcore = import_anomalib(PATCHCORE_MODULE)
    return patchcore.PatchcoreModel(
        layers=list(layers), backbone=backbone, pre_trained=False, num_neighbors=num_neighbors
    )


def backbone_of(model: nn.Module) -> nn.Module:
    """The feature extractor module of a PaDiM / PatchCore model (images -> {layer: features})."""
    return model.feature_extractor


def timm_network(model: nn.Module) -> nn.Module:
    """The timm backbone inside a PaDiM / PatchCore model (to copy the harness's weights into)."""
    return model.feature_extractor.feature_extractor


def train_with_frozen_backbone(model: nn.Module) -> None:
    """Training mode (the forward collects embeddings), the backbone kept in eval mode."""
    model.train()
    model.feature_extractor.eval()


def fit_gaussian(model: nn.Module) -> None:
    """PaDiM: fit the per-position Gaussians to the collected embeddings."""
    model.fit()


def stored_patches(model: nn.Module) -> int:
    """PatchCore: the number of patch embeddings collected so far."""
    return sum(len(e) for e in model.embedding_store)


def select_coreset(model: nn.Module, sampling_ratio: float, progress: bool) -> int:
    """PatchCore: the greedy coreset of the collected patches becomes the memory bank; returns its size.

    Draws from torch's global generator (random start, random projection).
    """
    sampler = import_anomalib(CORESET_MODULE)
    with anomalib_progress(sampler, progress):
        model.subsample_embedding(sampling_ratio)
    return len(model.memory_bank)


def maps_and_scores(output: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(maps [B, H, W], scores [B])`` of an eval-mode forward's ``InferenceBatch``."""
    maps = output.anomaly_map
    if maps.ndim == 4:
        maps = maps[:, 0]
    return maps, output.pred_score.reshape(-1)


# ---------------------------------------------------------------------------------------------- EfficientAD


def build_efficientad(model_size: str, teacher_out_channels: int, padding: bool, pad_maps: bool) -> nn.Module:
    """anomalib's ``EfficientAdModel`` (``model_size``: ``small`` or ``medium``), randomly initialised."""
    torch_model = import_anomalib(EFFICIENTAD_MODULE)
    return torch_model.EfficientAdModel(
        teacher_out_channels=teacher_out_channels,
        model_size=torch_model.EfficientAdModelSize(model_size),
        padding=padding,
        pad_maps=pad_maps,
    )


def build_pdn(model_size: str, out_channels: int, padding: bool) -> nn.Module:
    """EfficientAD's patch description network of ``model_size`` (small or medium)."""
    torch_model = import_anomalib(EFFICIENTAD_MODULE)
    cls = (
        torch_model.SmallPatchDescriptionNetwork if model_size == "small" else torch_model.MediumPatchDescriptionNetwork
    )
    return cls(out_channels=out_channels, padding=padding)


def efficientad_pdns(model: nn.Module) -> list[nn.Module]:
    """EfficientAD's patch description networks: the teacher and the student."""
    return [model.teacher, model.student]


def efficientad_autoencoder(model: nn.Module) -> nn.Module:
    """EfficientAD's autoencoder."""
    return model.ae


def efficientad_teacher(model: nn.Module) -> nn.Module:
    """The teacher network (its weights are loaded or distilled, then frozen)."""
    return model.teacher


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """What EfficientAD trains: the student's and the autoencoder's parameters."""
    return [*model.student.parameters(), *model.ae.parameters()]


def _overwrite(parameters: nn.ParameterDict, values: dict[str, torch.Tensor]) -> None:
    for name, value in values.items():
        parameters[name] = nn.Parameter(value.detach().float().to(parameters[name].device), requires_grad=False)


def set_teacher_statistics(model: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Store the teacher's per-channel mean and std (``[C]``) that standardise its outputs."""
    _overwrite(model.mean_std, {"mean": mean.reshape(1, -1, 1, 1), "std": std.reshape(1, -1, 1, 1)})


def set_map_quantiles(model: nn.Module, values: dict[str, torch.Tensor]) -> None:
    """Store the map normalisation quantiles ``qa_st``, ``qb_st``, ``qa_ae``, ``qb_ae``."""
    _overwrite(model.quantiles, values)


def reduce_elements(tensor: torch.Tensor) -> torch.Tensor:
    """anomalib's ``reduce_tensor_elems``: a random subset when too large for ``torch.quantile``."""
    return import_anomalib(EFFICIENTAD_MODULE).reduce_tensor_elems(tensor)


def student_teacher_distance(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Squared distance of the student's first half to the standardised teacher, ``[B, C, h, w]``."""
    _, distance = model.compute_student_teacher_distance(batch)
    return distance


def split_student(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's outputs: (the half that mimics the teacher, the half that mimics the autoencoder)."""
    output = model.student(images)
    channels = model.teacher_out_channels
    return output[:, :channels], output[:, channels:]


def random_augmentation(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """EfficientAD's brightness / contrast / saturation augmentation (draws from torch's global generator)."""
    return model.choose_random_aug_image(batch)


def autoencoder_output(model: nn.Module, images: torch.Tensor, image_size: torch.Size) -> torch.Tensor:
    """The autoencoder's output for ``images``, at the output grid of inputs of ``image_size``."""
    return model.ae(images, image_size)


def standardised_teacher_output(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The teacher's output standardised by ``mean_std`` (once set)."""
    return model._normalize_teacher(model.teacher(images))


def unnormalised_maps(model: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(map_st, map_ae)`` before the quantile normalisation, each ``[B, 1, H, W]``."""
    return model.get_maps(batch, normalize=False)


def teacher_download_info() -> tuple[str, str]:
    """``(archive name, URL)`` of anomalib's pretrained EfficientAD teachers (never downloaded here)."""
    info = import_anomalib(EFFICIENTAD_LIGHTNING_MODULE).WEIGHTS_DOWNLOAD_INFO
    return info.name, info.url

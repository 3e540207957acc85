"""anomalib without its side effects: quiet imports, no downloads, no progress bars of its own.

The harness uses anomalib's pure torch models only (see :mod:`.anomalib_models`); this module
keeps anomalib (and timm / torch.hub beneath it) from touching the console or the network:

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

from tqdm.auto import tqdm

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

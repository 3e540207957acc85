"""Process-level settings: seeding, device choice, glibc's heap setting, and the software
versions a record stores."""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import random
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata

import numpy as np
import torch
import xxhash

from .code_version import model_code_version
from .config import REPO


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch (all devices); prefer deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)


@contextmanager
def seeded(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Run the block with torch's (CPU, and ``device``'s when CUDA) and numpy's global
    generators seeded with ``seed``; their previous states are restored afterwards, so code
    around the block draws as if it had not run."""
    devices = [device] if device is not None and device.type == "cuda" else []
    numpy_state = np.random.get_state()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        np.random.seed(seed % (2**32))
        try:
            yield
        finally:
            np.random.set_state(numpy_state)


_MMAP_THRESHOLD: int | None = None


def limit_heap_fragmentation(threshold: int = 1 << 20) -> bool:
    """glibc: serve allocations of ``threshold`` bytes and more by mmap (``mallopt(M_MMAP_THRESHOLD)``).

    The same as exporting ``MALLOC_MMAP_THRESHOLD_=1048576``, but only for the jobs that need it
    (exported for every job it slowed every model's CPU work), however they are started.
    Without it, PatchCore's coreset loop, which allocates and frees a large distance vector per
    step, grows the native heap until the process is killed.
    Returns whether the setting was applied (False off glibc).
    """
    global _MMAP_THRESHOLD
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_mmap_threshold = -3  # <malloc.h>
    applied = bool(libc.mallopt(m_mmap_threshold, int(threshold)))
    if applied:
        _MMAP_THRESHOLD = int(threshold)
    return applied


def heap_mmap_threshold() -> int | None:
    """The threshold :func:`limit_heap_fragmentation` set in this process, None if never.

    The setting is process-wide and stays: jobs run after a PatchCore job in the same process
    (Hydra's basic launcher) run with it, which slows CPU work; records carry it.
    """
    return _MMAP_THRESHOLD


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name} was asked for but CUDA is not available on this machine")
    return device


def keep_on_device(nbytes: int, device: torch.device, share: float = 0.5) -> bool:
    """Whether ``nbytes`` of training data (images, frozen features) should move to ``device``
    once, instead of being copied from host memory at every step: never on the CPU (they are
    there); on CUDA when they take less than ``share`` of its free memory; on another
    accelerator, whose free memory is not read here, always."""
    if device.type == "cpu":
        return False
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return nbytes < share * free
    return True


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA) before reading a clock; no-op elsewhere."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def adam_implementation(device: torch.device) -> dict[str, bool]:
    """Keyword arguments of ``torch.optim.Adam`` for ``device``: the fused kernel on CUDA (one
    launch for all parameters), PyTorch's default elsewhere (the CPU's results stay as they were)."""
    return {"fused": True} if device.type == "cuda" else {}


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} {torch.cuda.get_device_name(index)}"
    if device.type != "cpu":
        return str(device)
    return f"cpu {platform.machine()} ({torch.get_num_threads()} threads)"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


#: untracked files under these folders are part of the code a job runs (new modules, configs, presets)
UNTRACKED_CODE = ("ulsad_bench", "conf", "experiments", "docs/examples")


def _git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, timeout=30)


def uncommitted_digest() -> str | None:
    """None for a clean tree, else 8 hex digits of xxh3 over the uncommitted changes to tracked files
    (``git diff HEAD --binary``) and the paths and bytes of untracked files under :data:`UNTRACKED_CODE`:
    two trees that differ anywhere there have different digests."""
    diff = _git("diff", "HEAD", "--binary", "--no-ext-diff", "--no-color")
    others = _git("ls-files", "--others", "--exclude-standard", "-z", "--", *UNTRACKED_CODE)
    if diff.returncode != 0 or others.returncode != 0:
        return None
    untracked = sorted(name for name in others.stdout.decode().split("\0") if name)
    if not diff.stdout and not untracked:
        return None
    digest = xxhash.xxh3_64(diff.stdout)
    for name in untracked:
        digest.update(f"\n{name}\n".encode())
        with contextlib.suppress(OSError):  # deleted meanwhile
            digest.update((REPO / name).read_bytes())
    return digest.hexdigest()[:8]


def git_commit() -> str | None:
    """``<short commit>``, or ``<short commit>-dirty-<digest>`` when the tree has uncommitted
    changes (:func:`uncommitted_digest`); None outside a git checkout."""
    try:
        out = _git("rev-parse", "--short", "HEAD")
        if out.returncode != 0:
            return None
        dirty = uncommitted_digest()
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.decode().strip()
    return commit if dirty is None else f"{commit}-dirty-{dirty}"


def versions(model_class: type | None = None) -> dict[str, str | None]:
    """The software a job runs with; ``code``: the digest of the code a job of ``model_class``
    runs (:func:`ulsad_bench.code_version.model_code_version`), when given."""
    code = {"code": model_code_version(model_class)} if model_class is not None else {}
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "anomalib": _version("anomalib"),
        "package": _version("ulsad-bench"),
        "git": git_commit(),
        **code,
    }

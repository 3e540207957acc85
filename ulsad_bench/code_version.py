"""Which code makes a job's numbers: a digest of the source of every module a job runs.

A git commit names the tree, but not an installed copy without git, and not which of its files a
cached artefact depends on. :func:`source_digest` hashes the source files of a module and of every
module of this package it imports, directly or through others (the static import graph, read by
``grimp``, the library behind the project's import contracts), so:

- a trained model or frozen features (:class:`ulsad_bench.features.FeatureCache`) are keyed on
  :func:`model_code_version`, the code of the job's stages (:mod:`ulsad_bench.runner` and what it
  imports) and of its model's modules (its class hierarchy's): editing a model's training code, the backbone, the data
  loading or the training loop starts new entries; editing the report, the plan or the sweep does not;
- decoded images (:mod:`ulsad_bench.data.decoded`) are keyed on the decoding code's digest;
- a record's ``versions.code`` is :func:`model_code_version`, compared by strict resume.

Digests are xxh3-128 (``xxhash``) over each module's name and source bytes, in name order; they
are computed once per process (the sources are read at the first call).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import sys
from pathlib import Path

import grimp
import xxhash

PACKAGE = "ulsad_bench"
ROOT = Path(__file__).resolve().parent
#: the module whose import closure is the code every job runs (its stages, records, metrics, data)
JOB_STAGES = "ulsad_bench.runner"
#: the interface every model implements (a model defined outside the package imports at least this)
BASE_MODULE = "ulsad_bench.models.base"
#: modules in every model's class hierarchy that are no model code (their versions are recorded apart)
NOT_CODE = ("builtins", "abc", "typing")


@functools.lru_cache(maxsize=1)
def _import_graph() -> grimp.ImportGraph:
    return grimp.build_graph(PACKAGE, cache_dir=None)


def import_closure(*modules: str) -> list[str]:
    """``modules`` and every module of the package they import, directly or not, sorted."""
    graph = _import_graph()
    found: set[str] = set()
    for name in modules:
        if name not in graph.modules:
            raise ValueError(f"{name} is not a module of {PACKAGE}")
        found.add(name)
        found |= graph.find_upstream_modules(name)
    return sorted(m for m in found if m == PACKAGE or m.startswith(f"{PACKAGE}."))


def _source_file(module: str) -> Path:
    """``a/b.py`` or ``a/b/__init__.py`` under the package's folder (nothing is imported)."""
    path = ROOT.joinpath(*module.split(".")[1:])
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


@functools.lru_cache(maxsize=64)
def source_digest(*modules: str) -> str:
    """16 hex digits of xxh3-128 over the source of :func:`import_closure` of ``modules``."""
    digest = xxhash.xxh3_128()
    for module in import_closure(*modules):
        digest.update(f"\n{module}\n".encode())
        digest.update(_source_file(module).read_bytes())
    return digest.hexdigest()[:16]


def _outside_source(module: str) -> bytes:
    """The source of a module outside the package, or a marker when it has no file (a notebook's
    ``__main__``): then only its name identifies it."""
    try:
        return Path(inspect.getfile(sys.modules.get(module) or importlib.import_module(module))).read_bytes()
    except (TypeError, OSError, ImportError):
        return f"<no source file for {module}>".encode()


@functools.lru_cache(maxsize=16)
def model_code_version(model_class: type) -> str:
    """The digest of the code a job of ``model_class`` runs: the job's stages (:data:`JOB_STAGES`),
    every module of the package that defines a class of its hierarchy (a researcher's subclass of
    ``Ulsad`` brings ULSAD's modules), with what they import, and the source file of each module
    outside the package that defines one (``docs/examples/knn_patch.py``, a researcher's own file)."""
    modules = list(dict.fromkeys(c.__module__ for c in model_class.__mro__))
    inside = [m for m in modules if m.startswith(f"{PACKAGE}.")]
    outside = [m for m in modules if not m.startswith(f"{PACKAGE}.") and m not in NOT_CODE]
    if not outside:
        return source_digest(JOB_STAGES, *inside)
    digest = xxhash.xxh3_128(source_digest(JOB_STAGES, BASE_MODULE, *inside).encode())
    for module in outside:
        digest.update(f"\n{module}\n".encode())
        digest.update(_outside_source(module))
    return digest.hexdigest()[:16]

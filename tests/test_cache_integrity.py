"""Caches that cannot lie: every entry checked against its content checksum, source files keyed on
their bytes, killed jobs' temporary files counted and removed, trained models keyed on the code."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import tiny_mvtec
from ulsad_bench import code_version, runner
from ulsad_bench.data.content import forget
from ulsad_bench.data.decoded import DecodedCache
from ulsad_bench.data.folder import read_category
from ulsad_bench.data.images import load_image_set
from ulsad_bench.data.sample import Sample
from ulsad_bench.features import FeatureCache, cache_bytes, cache_entries, evict_lru, temporary_files
from ulsad_bench.models.ulsad import Ulsad
from ulsad_bench.spec import JobSpec

SIZE = 16


def _load(samples: list[Sample], cache: DecodedCache | None, **kw):
    return load_image_set(samples, SIZE, with_masks=True, desc="t", progress=False, cache=cache, **kw)


def _damage_in_place(path: Path, how: str) -> None:
    """Change ``path``'s bytes, keeping its size (and its modification time)."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    if how == "invert":  # every byte of the second half (the array data, past any header)
        half = len(data) // 2
        data[half:] = bytes(255 - b for b in data[half:])
    else:  # the whole file set to one byte value, as 0x3F or 0xFF
        data[:] = bytes([int(how, 16)]) * len(data)
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


# ----------------------------------------------------------------------------- decoded images


def test_a_decoded_entry_with_other_bytes_at_the_same_size_is_never_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    samples = read_category(tiny_mvtec(tmp_path / "data", n_train=4) / "bottle").test
    cache = DecodedCache(tmp_path / "features")
    truth = _load(samples, None)
    _load(samples, cache)
    ((_, size, entry),) = cache_entries(tmp_path / "features")
    _damage_in_place(entry, "invert")
    assert entry.stat().st_size == size
    with caplog.at_level(logging.WARNING):
        again = _load(samples, cache)
    assert torch.equal(again.images, truth.images) and torch.equal(again.masks, truth.masks)
    assert cache.discarded == [entry.name] and str(entry) in caplog.text and "checksum" in caplog.text
    assert _load(samples, cache).images.equal(truth.images) and cache.hits == 1  # rewritten, then served


def _same_size_png(path: Path, value: int) -> None:
    """Rewrite an image with other pixels at exactly its byte size (uncompressed PNG), mtime restored."""
    stat = path.stat()
    shape = np.asarray(Image.open(path)).shape
    Image.fromarray(np.full(shape, value, np.uint8)).save(path, compress_level=0)
    assert path.stat().st_size == stat.st_size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # touch -r


def test_a_source_image_rewritten_at_the_same_size_and_mtime_is_decoded_again(tmp_path: Path) -> None:
    category = tiny_mvtec(tmp_path / "data", n_train=4) / "bottle"
    for path in (category / "test" / "good").glob("*.png"):  # uncompressed: a rewrite keeps the size
        Image.open(path).copy().save(path, compress_level=0)
    samples = read_category(category).test
    i = next(i for i, s in enumerate(samples) if s.label == 0)
    cache = DecodedCache(tmp_path / "features")
    before = _load(samples, cache)
    _same_size_png(samples[i].path, 7)
    forget()  # a new job: nothing remembered from this process's earlier reads
    after = _load(samples, cache)
    assert int(after.images[i].float().mean()) == 7 and not torch.equal(after.images[i], before.images[i])
    assert after.key != before.key  # the feature caches' key follows the bytes too
    by_stat = _load(samples, DecodedCache(tmp_path / "features", source_keys="stat"))
    _same_size_png(samples[i].path, 9)
    forget()
    stale = _load(samples, DecodedCache(tmp_path / "features", source_keys="stat"))
    assert torch.equal(stale.images[i], by_stat.images[i])  # what stat keys cannot see (documented)


def test_resume_false_always_keys_the_caches_on_content(tiny_cfg) -> None:
    stat = JobSpec.from_config(tiny_cfg("cache.source_keys=stat"))
    assert runner.job_source_keys(stat) == "stat"
    assert runner.job_source_keys(JobSpec.from_config(tiny_cfg("cache.source_keys=stat", "resume=false"))) == "content"
    assert runner.job_source_keys(JobSpec.from_config(tiny_cfg())) == "content"
    with pytest.raises(ValueError, match=r"cache.source_keys='mtime': expected one of content, stat"):
        JobSpec.from_config(tiny_cfg("cache.source_keys=mtime"))


# ----------------------------------------------------------------------------- features and trained models


class NotAllowed:
    """A class ``torch.load(weights_only=True)`` refuses to unpickle."""


def _write_foreign_pickle(path: Path) -> None:
    torch.save({"value": NotAllowed()}, path)


@pytest.mark.parametrize("damage", ["invert", "3F", "FF", "truncate", "foreign_pickle", "old_format"])
def test_a_damaged_feature_or_model_entry_is_recomputed_never_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    value = {"state_dict": {"w": torch.arange(4096, dtype=torch.float32)}, "info": {"epochs": 3}}
    calls = []

    def compute():
        calls.append(1)
        return value

    FeatureCache.clear_memory()
    cache = FeatureCache(tmp_path / "features", code_version="c1")
    cache.get_or_compute({"kind": "trained"}, compute, keep_in_memory=False)
    (entry,) = (tmp_path / "features").glob("*.pt")
    if damage == "truncate":
        entry.write_bytes(entry.read_bytes()[:-100])
    elif damage == "foreign_pickle":
        _write_foreign_pickle(entry)
    elif damage == "old_format":  # an entry of the format before checksums: the bare value
        torch.save(value, entry)
    else:
        _damage_in_place(entry, damage)
    with caplog.at_level(logging.WARNING):
        got, hit = FeatureCache(tmp_path / "features", code_version="c1").get_or_compute(
            {"kind": "trained"}, compute, keep_in_memory=False
        )
    assert not hit and len(calls) == 2 and torch.equal(got["state_dict"]["w"], value["state_dict"]["w"])
    assert str(entry) in caplog.text and "recomputed" in caplog.text
    again, hit = FeatureCache(tmp_path / "features", code_version="c1").get_or_compute(
        {"kind": "trained"}, compute, keep_in_memory=False
    )
    assert hit and len(calls) == 2 and torch.equal(again["state_dict"]["w"], value["state_dict"]["w"])


def test_entries_of_other_code_are_not_served(tmp_path: Path) -> None:
    FeatureCache.clear_memory()
    first = FeatureCache(tmp_path, code_version="a").get_or_compute({"k": 1}, lambda: torch.ones(2))
    other = FeatureCache(tmp_path, code_version="b").get_or_compute({"k": 1}, lambda: torch.zeros(2))
    assert not first[1] and not other[1] and other[0].sum() == 0
    assert len(list(tmp_path.glob("*.pt"))) == 2


def test_the_job_code_digest_follows_the_code_a_job_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    closure = code_version.import_closure(code_version.JOB_STAGES, "ulsad_bench.models.ulsad.model")
    assert {"ulsad_bench.models.ulsad.model", "ulsad_bench.models.training", "ulsad_bench.data.images"} <= set(closure)
    assert not any(m.startswith("ulsad_bench.report") for m in closure)
    copy = tmp_path / "ulsad_bench"
    shutil.copytree(code_version.ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(code_version, "ROOT", copy)

    def digest(model: type = Ulsad) -> str:
        code_version.source_digest.cache_clear()
        code_version.model_code_version.cache_clear()
        return code_version.model_code_version(model)

    before, own = digest(), digest(ResearchersUlsad)
    (copy / "report" / "build.py").write_text((copy / "report" / "build.py").read_text() + "\n# edited\n")
    assert digest() == before  # the report is not code a job runs
    (copy / "models" / "training.py").write_text((copy / "models" / "training.py").read_text() + "\n# edited\n")
    assert digest() != before
    assert digest(ResearchersUlsad) != own  # a subclass outside the package: ULSAD's modules are its code too
    code_version.source_digest.cache_clear()
    code_version.model_code_version.cache_clear()


class ResearchersUlsad(Ulsad):
    """A model defined outside the package, on top of ULSAD."""


# ----------------------------------------------------------------------------- temporary files


def test_a_killed_jobs_temporary_files_count_and_stale_ones_are_removed(tmp_path: Path) -> None:
    folder = tmp_path / "features"
    folder.mkdir()
    orphan, fresh = folder / ".tmp-abc.pt", folder / ".tmp-def.npy"
    orphan.write_bytes(b"x" * 1500)
    fresh.write_bytes(b"y" * 1000)
    old = time.time() - 2 * 3600
    os.utime(orphan, (old, old))
    entry = folder / "e.pt"
    entry.write_bytes(b"z" * 600)
    assert sum(size for _, size, _ in temporary_files(folder)) == 2500
    assert cache_bytes(folder) == 3100  # what the plan reports as in use
    deleted = evict_lru(folder, max_bytes=1500)
    assert not orphan.exists() and fresh.exists()  # the running job's file is left alone...
    assert deleted == [orphan.name, entry.name]  # ...but counts: 1000 + 600 > 1500 evicts the entry


def test_a_trained_ulsad_is_not_reused_after_its_code_changed(
    tiny_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_ulsad import TINY_ULSAD

    cfg = tiny_cfg(*TINY_ULSAD, "model.epochs=1", "resume=false", "seed=11")
    FeatureCache.clear_memory()
    runner.run(cfg, tmp_path / "a")
    assert runner.run(cfg, tmp_path / "b")["fit"]["reused_trained_model"] is True
    real = runner.model_code_version
    monkeypatch.setattr(runner, "model_code_version", lambda cls: real(cls) + "-edited")  # ULSAD's code edited
    assert runner.run(cfg, tmp_path / "c")["fit"]["reused_trained_model"] is False

"""The feature / trained-model cache is bounded: least recently used entries go first."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import torch

from ulsad_bench.config import REPO
from ulsad_bench.features import FeatureCache, cache_entries, cache_key

ENTRY_BYTES = 4 * 64 * 1024  # one float32 tensor of 64 Ki values


def _entry(name: str):
    return lambda: torch.full((64 * 1024,), float(len(name)))


def test_least_recently_used_entries_are_evicted_first(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, max_bytes=int(3.5 * ENTRY_BYTES))
    FeatureCache.clear_memory()
    for i, name in enumerate(("a", "bb", "ccc")):  # used in this order, a second apart
        cache.get_or_compute({"name": name}, _entry(name), keep_in_memory=False)
        past = time.time() - 100 + i
        os.utime(tmp_path / f"{cache_key({'name': name})}.pt", (past, past))
    assert len(cache_entries(tmp_path)) == 3 and cache.evicted == []
    cache.get_or_compute({"name": "a"}, _entry("a"), keep_in_memory=False)  # a hit: "a" is now the most recent
    assert cache.hits == 1
    cache.get_or_compute({"name": "dddd"}, _entry("dddd"), keep_in_memory=False)  # over the limit: evict "bb"
    assert cache.evicted == [f"{cache_key({'name': 'bb'})}.pt"]
    misses = cache.misses
    cache.get_or_compute({"name": "a"}, _entry("a"), keep_in_memory=False)
    cache.get_or_compute({"name": "ccc"}, _entry("ccc"), keep_in_memory=False)
    assert cache.misses == misses  # "a" (used) and "ccc" stayed
    value, hit = cache.get_or_compute({"name": "bb"}, _entry("bb"), keep_in_memory=False)
    assert not hit and cache.misses == misses + 1 and float(value[0]) == 2.0  # "bb" was evicted, recomputed the same
    assert cache.get_or_compute({"name": "bb"}, _entry("bb"), keep_in_memory=False)[1]  # now a hit
    assert sum(size for _, size, _ in cache_entries(tmp_path)) <= int(3.5 * ENTRY_BYTES)
    assert all(p.with_suffix(".json").is_file() for _, _, p in cache_entries(tmp_path))
    assert len(list(tmp_path.glob("*.json"))) == len(cache_entries(tmp_path))


def test_an_entry_larger_than_the_limit_is_kept_alone(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, max_bytes=ENTRY_BYTES // 2)
    cache.get_or_compute({"name": "x"}, _entry("x"), keep_in_memory=False)
    cache.get_or_compute({"name": "yy"}, _entry("yy"), keep_in_memory=False)
    assert [p.name for _, _, p in cache_entries(tmp_path)] == [f"{cache_key({'name': 'yy'})}.pt"]  # the newest
    assert cache.evicted == [f"{cache_key({'name': 'x'})}.pt"]


def test_make_clean_cache_empties_the_bounded_caches(tmp_path: Path) -> None:
    (tmp_path / "features").mkdir()
    (tmp_path / "features" / "x.pt").write_bytes(b"0" * 10)
    (tmp_path / "synthetic").mkdir()
    result = subprocess.run(
        ["make", "clean-cache", f"CACHE_DIR={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "features").exists() and (tmp_path / "synthetic").is_dir()

"""The decoded-split cache: a hit is a decode, bit for bit; anything that changes the pixels misses."""

from __future__ import annotations

import os
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import tiny_mvtec
from ulsad_bench.data.decoded import DecodedCache, entry_bytes
from ulsad_bench.data.folder import read_category
from ulsad_bench.data.images import ImageSet, load_image_set
from ulsad_bench.data.sample import Sample
from ulsad_bench.features import FeatureCache, cache_entries

SIZE = 16


@pytest.fixture
def category(tmp_path: Path) -> Path:
    return tiny_mvtec(tmp_path / "data", n_train=4) / "bottle"


def _load(samples: list[Sample], cache: DecodedCache | None, with_masks: bool = True, **kw) -> ImageSet:
    options = {"size": SIZE, "resize": "cv2_linear", **kw}
    return load_image_set(samples, with_masks=with_masks, desc="test", progress=False, cache=cache, **options)


def _same(a: ImageSet, b: ImageSet) -> bool:
    masks_same = (a.masks is None and b.masks is None) or (
        a.masks is not None and b.masks is not None and a.masks.dtype == b.masks.dtype and torch.equal(a.masks, b.masks)
    )
    return a.images.dtype == b.images.dtype and torch.equal(a.images, b.images) and masks_same and a.key == b.key


def _bump(path: Path) -> None:
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_a_hit_is_bit_identical_to_a_decode(category: Path, tmp_path: Path) -> None:
    found = read_category(category)
    cache = DecodedCache(tmp_path / "features")
    for samples, with_masks in ((found.train, False), (found.test, True)):
        for resize in ("cv2_linear", "pil_bilinear"):
            plain = _load(samples, None, with_masks, resize=resize)
            first = _load(samples, cache, with_masks, resize=resize)
            hits = cache.hits
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # no read-only-array warning from torch.from_numpy
                second = _load(samples, cache, with_masks, resize=resize)
            assert cache.hits == hits + 1
            assert _same(plain, first) and _same(plain, second)
            assert second.images.shape == (len(samples), 3, SIZE, SIZE)
    assert cache.misses == 4 and len(cache_entries(tmp_path / "features")) == 4
    assert plain.masks is not None and plain.masks.any() and not plain.masks.all()
    # a consumer writing into a hit changes its own copy-on-write pages, never the entry
    second.images.zero_()
    assert _same(plain, _load(found.test, cache, resize="pil_bilinear"))


def test_a_changed_file_size_or_resize_misses(category: Path, tmp_path: Path) -> None:
    found = read_category(category)
    cache = DecodedCache(tmp_path / "features")
    _load(found.test, cache)
    _load(found.train, cache, with_masks=False)
    assert cache.misses == 2
    _load(found.test, cache)
    assert (cache.hits, cache.misses) == (1, 2)
    _load(found.test, cache, size=SIZE * 2)
    _load(found.test, cache, resize="pil_bilinear")
    _load(found.test, cache, with_masks=False)
    assert cache.misses == 5
    _bump(found.test[0].path)  # modification time: the bytes are the same, the entry serves (content keys)
    _load(found.test, cache)
    assert (cache.hits, cache.misses) == (2, 5)
    by_stat = DecodedCache(tmp_path / "features", source_keys="stat")
    _load(found.test, by_stat)
    _bump(found.test[0].path)
    _load(found.test, by_stat)
    assert by_stat.misses == 2  # stat keys: a touched file misses
    mask = next(s for s in found.test if s.mask_paths).mask_paths[0]
    mask.write_bytes(mask.read_bytes() + b"\0")  # byte size (a mask file: test splits only)
    _load(found.test, cache)
    _load(found.train, cache, with_masks=False)
    assert cache.misses == 6 and cache.hits == 3  # the train split, which reads no masks, still hits
    assert _same(_load(found.test, None), _load(found.test, cache))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "wrong_shape"])
def test_a_corrupt_entry_is_decoded_again(category: Path, tmp_path: Path, damage: str) -> None:
    samples = read_category(category).test
    cache = DecodedCache(tmp_path / "features")
    _load(samples, cache)
    (_, _, entry), *_ = cache_entries(tmp_path / "features")
    data = entry.read_bytes()
    damaged = {
        "truncate": data[: len(data) - 7],
        "garbage": b"not an npy file" * 10,
        "empty": b"",
        "wrong_shape": b"",
    }[damage]
    if damage == "wrong_shape":
        np.save(entry, np.zeros(entry_bytes(len(samples) - 1, SIZE, True), np.uint8))
    else:
        entry.write_bytes(damaged)
    assert _same(_load(samples, None), _load(samples, cache))
    assert (cache.hits, cache.misses) == (0, 2)
    assert entry.stat().st_size == len(data)  # overwritten with the decode
    _load(samples, cache)
    assert cache.hits == 1


def test_entries_count_toward_the_limit_and_go_least_recently_used_first(category: Path, tmp_path: Path) -> None:
    found = read_category(category)
    folder = tmp_path / "features"
    one = entry_bytes(len(found.train), SIZE, False) + 128  # an entry with its .npy header
    cache = DecodedCache(folder, max_bytes=int(2.5 * one))
    splits = [("cv2_linear", SIZE), ("pil_bilinear", SIZE), ("cv2_linear", SIZE - 1)]
    for i, (resize, size) in enumerate(splits[:2]):
        _load(found.train, cache, with_masks=False, resize=resize, size=size)
        past = time.time() - 100 + i
        os.utime(cache_entries(folder)[-1][2], (past, past))
    assert len(cache_entries(folder)) == 2 and cache.evicted == []
    first = min(cache_entries(folder))[2]
    _load(found.train, cache, with_masks=False, resize="cv2_linear", size=SIZE)  # a hit refreshes the oldest
    assert cache.hits == 1 and max(cache_entries(folder))[2] == first
    _load(found.train, cache, with_masks=False, resize=splits[2][0], size=splits[2][1])  # over the limit
    assert len(cache.evicted) == 1 and len(cache_entries(folder)) == 2
    assert first.is_file() and not (folder / cache.evicted[0]).exists()
    assert not (folder / cache.evicted[0]).with_suffix(".json").exists()
    misses = cache.misses
    _load(found.train, cache, with_masks=False, resize="pil_bilinear", size=SIZE)  # the evicted one: decoded again
    assert cache.misses == misses + 1
    # one limit for features and decoded splits: a feature write evicts decoded entries too
    features = FeatureCache(folder, max_bytes=int(1.5 * one))
    features.get_or_compute({"x": 1}, lambda: torch.zeros(one // 4), keep_in_memory=False)
    assert [p.suffix for _, _, p in cache_entries(folder)] == [".pt"]
    assert all(name.endswith(".npy") for name in features.evicted)


def test_an_entry_being_written_is_never_listed_nor_evicted(tmp_path: Path) -> None:
    (tmp_path / ".tmp-abc.npy").write_bytes(b"0" * 1000)
    (tmp_path / ".lock-abc").write_bytes(b"")
    (tmp_path / "done.npy").write_bytes(b"0" * 10)
    assert [p.name for _, _, p in cache_entries(tmp_path)] == ["done.npy"]
    FeatureCache(tmp_path, max_bytes=0).enforce_limit()
    assert (tmp_path / ".tmp-abc.npy").is_file() and not (tmp_path / "done.npy").exists()


def test_concurrent_loads_of_one_split_decode_it_once(category: Path, tmp_path: Path) -> None:
    samples = read_category(category).test
    calls: list[int] = []

    def slow(images: np.ndarray, masks: np.ndarray | None) -> None:
        calls.append(1)
        time.sleep(0.3)
        images[...] = 7

    caches = [DecodedCache(tmp_path / "features") for _ in range(3)]
    results: list[np.ndarray] = []
    threads = [
        threading.Thread(target=lambda c=c: results.append(c.get_or_decode(samples, SIZE, "cv2_linear", True, slow)[0]))
        for c in caches
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and sum(c.hits for c in caches) == 2
    assert all((r == 7).all() for r in results)
    assert not list((tmp_path / "features").glob(".lock-*"))


def test_without_a_cache_nothing_is_written(category: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    found = read_category(category)
    _load(found.test, None)
    _load(found.train, None, with_masks=False)
    assert sorted(tmp_path.rglob("*")) == before


def test_an_empty_split_is_not_stored(tmp_path: Path) -> None:
    cache = DecodedCache(tmp_path / "features")
    empty = _load([], cache)
    assert empty.images.shape == (0, 3, SIZE, SIZE) and empty.masks is not None and empty.masks.shape == (0, SIZE, SIZE)
    assert not (tmp_path / "features").exists()


def test_a_folder_is_accepted_as_the_cache(category: Path, tmp_path: Path) -> None:
    samples = read_category(category).train
    _load(samples, tmp_path / "features", with_masks=False)  # type: ignore[arg-type]
    assert len(cache_entries(tmp_path / "features")) == 1
    assert _same(_load(samples, None, with_masks=False), _load(samples, tmp_path / "features", with_masks=False))  # type: ignore[arg-type]

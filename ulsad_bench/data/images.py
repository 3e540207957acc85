"""Decoded images of one split, held in memory at the model's input size."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .content import stat_line
from .decoded import DecodedCache
from .sample import Sample, read_image, read_mask


@dataclass
class ImageSet:
    """Images (and, for test sets, masks) of one split.

    Attributes:
        samples: the samples, in order.
        images: uint8 ``[N, 3, S, S]``.
        masks: bool ``[N, S, S]`` or None when masks were not read (train / validation).
        key: identity of the file list and size, used to key feature caches.
    """

    samples: list[Sample]
    images: torch.Tensor
    masks: torch.Tensor | None
    key: str
    channels: list[Any] | None = None  # MVTec LOCO's ground-truth channels (metrics.Channel), for sPRO

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)

    @property
    def kinds(self) -> list[str]:
        return [s.kind for s in self.samples]

    def center_crop(self, crop: int) -> ImageSet:
        """The central ``crop`` x ``crop`` window of every image, mask and channel (as anomalib's
        ``A.CenterCrop`` after the resize, identical for image and mask)."""
        size = self.size
        if not 0 < crop <= size:
            raise ValueError(f"center_crop={crop} must lie in (0, dataset.image_size={size}]")
        top = (size - crop) // 2
        window = (slice(None), slice(top, top + crop), slice(top, top + crop))
        channels = None
        if self.channels is not None:
            channels = []
            for c in self.channels:
                mask = c.mask[window[1:]]
                if mask.any():
                    channels.append(type(c)(c.image, mask, min(c.saturation, float(mask.sum()))))
        return ImageSet(
            samples=self.samples,
            images=self.images[(slice(None), slice(None), *window[1:])].contiguous(),
            masks=None if self.masks is None else self.masks[window].contiguous(),
            key=f"{self.key}|crop{crop}",
            channels=channels,
        )

    def float_images(self, indices: Sequence[int] | torch.Tensor | slice) -> torch.Tensor:
        """Images ``[B, 3, S, S]`` as float32 in [0, 1]."""
        return self.images[indices].float().div_(255.0)

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        progress: bool = False,
        desc: str = "batches",
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(indices [B], images [B, 3, S, S] float in [0, 1])``.

        ``shuffle``: one ``torch.randperm(N, generator=generator)`` per call (an epoch's order);
        ``drop_last``: leave out the last partial batch (a training loader's ``drop_last=True``);
        ``progress``: a tqdm bar named ``desc``.
        """
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        stop = n - n % batch_size if drop_last else n
        starts = range(0, stop, batch_size)
        for start in tqdm(starts, desc=desc, leave=False, disable=not progress):
            idx = order[start : start + batch_size]
            yield idx, self.float_images(idx)


def file_list_key(
    samples: Sequence[Sample], size: int, resize: str = "cv2_linear", source_keys: str = "content"
) -> str:
    """Hash of the files (path, byte size and content digest, or modification time with
    ``source_keys="stat"``: :mod:`.content`), the image size and the resize."""
    digest = hashlib.sha256(f"size={size}|resize={resize}|{source_keys}".encode())
    for sample in samples:
        digest.update(f"\n{stat_line(sample.path, source_keys)}".encode())
    return digest.hexdigest()[:16]


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a SLURM allocation), else ``os.cpu_count()``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def decode_into(
    samples: Sequence[Sample],
    size: int,
    resize: str,
    images: np.ndarray,
    masks: np.ndarray | None,
    desc: str,
    workers: int | None = None,
    progress: bool = True,
) -> None:
    """Fill ``images[i]`` with :func:`read_image` (and ``masks[i]`` with :func:`read_mask`) of
    every sample, in a thread pool of ``workers`` (None: :func:`usable_cpus`) with a tqdm bar.

    Threads, not processes: most of the work (Pillow's decoder, which releases the GIL for each
    chunk it decodes, and OpenCV's resize) runs without the GIL, and threads write straight into
    ``images`` / ``masks`` where processes would pickle every result back;
    ``python -m ulsad_bench.decode_bench --compare-pools`` times both on the machine at hand.
    """

    def load(index: int) -> None:
        images[index] = read_image(samples[index].path, size, resize)
        if masks is not None:
            masks[index] = read_mask(samples[index], size, resize)

    with ThreadPoolExecutor(max_workers=workers or usable_cpus()) as pool:
        list(
            tqdm(pool.map(load, range(len(samples))), total=len(samples), desc=desc, leave=False, disable=not progress)
        )


def load_image_set(
    samples: Sequence[Sample],
    size: int,
    with_masks: bool,
    desc: str,
    workers: int | None = None,
    progress: bool = True,
    resize: str = "cv2_linear",
    cache: DecodedCache | str | Path | None = None,
    source_keys: str = "content",
) -> ImageSet:
    """Decode and resize every image (and mask) of a split (:func:`decode_into`; ``resize``:
    :data:`~ulsad_bench.data.sample.RESIZE_METHODS`).

    ``cache``: a :class:`~ulsad_bench.data.decoded.DecodedCache` (or its folder, unbounded) to
    decode each split once and serve later loads memory-mapped from disk, bit-identical to a
    decode; None: decode every time and write nothing. ``source_keys``: what identifies the
    files in the set's :attr:`ImageSet.key` (the feature caches' key): their bytes (``content``)
    or their stat (``stat``), :mod:`.content`; a given cache keys on its own setting.
    """
    samples = list(samples)
    if cache is None:
        images = np.empty((len(samples), 3, size, size), dtype=np.uint8)
        masks = np.zeros((len(samples), size, size), dtype=bool) if with_masks else None
        decode_into(samples, size, resize, images, masks, desc, workers, progress)
    else:
        cache = cache if isinstance(cache, DecodedCache) else DecodedCache(cache, source_keys=source_keys)
        images, masks, _ = cache.get_or_decode(
            samples,
            size,
            resize,
            with_masks,
            lambda images, masks: decode_into(samples, size, resize, images, masks, desc, workers, progress),
        )
    return ImageSet(
        samples=samples,
        images=torch.from_numpy(images),
        masks=None if masks is None else torch.from_numpy(masks),
        key=file_list_key(samples, size, resize, source_keys),
    )

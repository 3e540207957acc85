"""EfficientAD's penalty images, offline: ImageNet-like images from a configured folder.

anomalib's EfficientAd downloads imagenette when its Lightning module starts training; the
harness takes the images from a folder instead, or trains without the penalty.

``model.penalty_dir`` is a folder of ImageNet-like images: anomalib's ``imagenette2`` (a
torchvision ImageFolder with class subfolders) or any folder of images; every image file
below it is used, at any depth. Each is read as anomalib does: resized to twice the input
size, random grayscale (p = 0.3), centre crop to the input size. ``null`` trains without the
penalty term.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from ...data import DatasetError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


def penalty_files(folder: str) -> list[Path]:
    """Every image file below ``folder`` (ImageFolder class subfolders or a flat folder)."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DatasetError(
            f"model.penalty_dir={folder!r}: no such folder ({root.resolve()}). Expected a folder of ImageNet-like "
            "images (e.g. imagenette2 from https://s3.amazonaws.com/fast-ai-imageclas/imagenette2.tgz, extracted), "
            "or model.penalty_dir=null to train EfficientAD without the penalty."
        )
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DatasetError(
            f"model.penalty_dir={folder!r}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) below {root}"
        )
    return files


class PenaltyImages(Dataset):
    """Penalty images as anomalib prepares imagenette: ``[3, S, S]`` in [0, 1]."""

    def __init__(self, files: list[Path], size: int, grayscale: float) -> None:
        self.files = files
        self.transform = transforms.Compose(
            [
                transforms.Resize((2 * size, 2 * size)),
                transforms.RandomGrayscale(p=grayscale),
                transforms.CenterCrop((size, size)),
                transforms.ToTensor(),
            ]
        )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        path = self.files[index]
        try:
            with Image.open(path) as image:
                return self.transform(image.convert("RGB"))
        except (OSError, UnidentifiedImageError) as err:
            raise DatasetError(f"unreadable penalty image {path}: {err}") from err


def penalty_stream(
    files: list[Path], size: int, grayscale: float, seed: int, workers: int, pin_memory: bool
) -> Iterator[torch.Tensor]:
    """Endless penalty images in batches of one (anomalib: shuffled, batch size 1), ``[1, 3, S, S]``."""
    loader = DataLoader(
        PenaltyImages(files, size, grayscale),
        batch_size=1,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
    )
    while True:
        yield from loader

"""``dataset.category=all``: the category list of the dataset a command line composes to."""

from __future__ import annotations

from .config import compose, fixed_overrides
from .data import categories_of, with_category


def dataset_categories(overrides: list[str]) -> list[str]:
    """Every category of the dataset that the config composed with ``overrides`` names (an
    ``+experiment=`` preset may choose the dataset)."""
    cfg = compose(overrides)
    return categories_of(with_category(cfg.dataset, "all"))


def expand_all_categories(argv: list[str]) -> list[str]:
    """Command-line arguments with ``dataset.category=all`` replaced by the dataset's categories.

    The dataset is the one the whole command line composes to (``dataset=``, or a preset's), so
    every override takes part; sweeps over other keys do not change it, and a sweep over the
    dataset itself is refused (its categories differ). The result is a multirun (``-m`` is
    added when missing).
    """
    if "dataset.category=all" not in argv:
        return list(argv)
    categories = ",".join(dataset_categories(fixed_overrides(argv)))
    expanded = [f"dataset.category={categories}" if a == "dataset.category=all" else a for a in argv]
    return expanded if {"-m", "--multirun"} & set(expanded) else ["-m", *expanded]

"""A model's settings, declared once: a frozen dataclass per model.

Each model declares its hyperparameters as one frozen dataclass (``UlsadSettings``, ...): the
names, defaults and checks of ``conf/model/<name>.yaml``'s values. The model's constructor takes
them as keyword arguments (:func:`adopt` checks them through the dataclass and sets them on the
model), its ``hyperparameters()`` record starts from :func:`as_record`, and a setting marked
:func:`trains` is part of what a trained model depends on (:func:`training_settings`: ULSAD's
trained-model cache key).
"""

from __future__ import annotations

from dataclasses import Field, field, fields
from typing import Any

TRAINS = "trains"


def trains(default: Any) -> Any:
    """A setting the trained networks depend on (the trained-model cache keys on it)."""
    return field(default=default, metadata={TRAINS: True})


def training_settings(settings_class: type) -> tuple[str, ...]:
    """The names of the settings marked :func:`trains`, in declaration order."""
    return tuple(f.name for f in fields(settings_class) if f.metadata.get(TRAINS))


def coerce(settings: Any, **types: type) -> None:
    """Convert the named fields of a frozen ``settings`` in place (YAML's ``0`` for a float, ...)."""
    for name, kind in types.items():
        value = getattr(settings, name)
        if value is not None:
            object.__setattr__(settings, name, kind(value))


def adopt(model: Any, settings: Any) -> None:
    """``model.settings`` and each setting as an attribute of the model (lists for tuples)."""
    model.settings = settings
    for item in fields(settings):
        value = getattr(settings, item.name)
        setattr(model, item.name, list(value) if isinstance(value, tuple) else value)


def as_record(model: Any, settings_class: type, **resolved: Any) -> dict[str, Any]:
    """Every setting as the model holds it (``resolved``: values settled at set-up replace theirs)."""
    names: list[Field[Any]] = list(fields(settings_class))
    return {item.name: resolved.get(item.name, getattr(model, item.name)) for item in names}

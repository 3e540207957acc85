"""Every numeric setting carries a declared range, checked before a job does any work.

The ranges are read from the settings classes' schema (pydantic's JSON schema of the dataclass), so
a numeric setting added without a range fails :func:`test_every_numeric_setting_refuses_a_value_out_of_its_range`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from tests.conftest import compose_config
from ulsad_bench import runner
from ulsad_bench.models.cflow.model import Cflow, CflowSettings
from ulsad_bench.models.dfr.model import Dfr, DfrSettings
from ulsad_bench.models.draem.model import Draem, DraemSettings
from ulsad_bench.models.efficientad.model import EfficientAd, EfficientAdSettings
from ulsad_bench.models.efficientad.teacher import DistillationConfig
from ulsad_bench.models.fastflow.model import Fastflow, FastflowSettings
from ulsad_bench.models.padim import Padim, PadimSettings
from ulsad_bench.models.patchcore import Patchcore, PatchcoreSettings
from ulsad_bench.models.reverse_distillation.model import ReverseDistillation, ReverseDistillationSettings
from ulsad_bench.models.ulsad.model import Ulsad
from ulsad_bench.models.ulsad.settings import UlsadSettings
from ulsad_bench.spec import TOP_LEVEL_SETTINGS, JobSpec, ProfileSpec

MODELS = {
    "ulsad": (Ulsad, UlsadSettings),
    "padim": (Padim, PadimSettings),
    "patchcore": (Patchcore, PatchcoreSettings),
    "dfr": (Dfr, DfrSettings),
    "efficientad": (EfficientAd, EfficientAdSettings),
    "cflow": (Cflow, CflowSettings),
    "draem": (Draem, DraemSettings),
    "fastflow": (Fastflow, FastflowSettings),
    "reverse_distillation": (ReverseDistillation, ReverseDistillationSettings),
}
#: every settings class, the prefix its settings have on the command line, and valid values for
#: the fields without a default
SETTINGS_CLASSES: dict[str, tuple[type, str, dict[str, Any]]] = {
    **{cls.__name__: (cls, "model", {}) for _, cls in MODELS.values()},
    "DistillationConfig": (DistillationConfig, "model.distillation", {}),
    "ProfileSpec": (
        ProfileSpec,
        "profile",
        {"enabled": True, "batch_size": 32, "warmup_batches": 2, "timed_batches": 5, "latency_calls": 20},
    ),
}
BOUNDS = ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum")


def _numeric_parts(schema: dict[str, Any], path: tuple[int, ...] = ()) -> list[tuple[tuple[int, ...], dict[str, Any]]]:
    """The numeric sub-schemas of a field's schema, each with its index in a tuple value (``()``: the value)."""
    if schema.get("type") in ("integer", "number"):
        return [(path, schema)]
    found = []
    for option in schema.get("anyOf", []):
        found += _numeric_parts(option, path)
    for index, item in enumerate(schema.get("prefixItems", [])):
        found += _numeric_parts(item, (*path, index))
    return found


def _outside(schema: dict[str, Any]) -> list[float]:
    """Values just outside each declared bound of a numeric schema."""
    step = 1 if schema["type"] == "integer" else 1e-6
    values = []
    if "minimum" in schema:
        values.append(schema["minimum"] - step)
    if "exclusiveMinimum" in schema:
        values.append(schema["exclusiveMinimum"])
    if "maximum" in schema:
        values.append(schema["maximum"] + step)
    if "exclusiveMaximum" in schema:
        values.append(schema["exclusiveMaximum"])
    return values


def _default(cls: type, name: str, base: dict[str, Any]) -> Any:
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    return base.get(name, field.default)


def _cases() -> list[Any]:
    cases = []
    for label, (cls, prefix, base) in SETTINGS_CLASSES.items():
        for name, schema in TypeAdapter(cls).json_schema()["properties"].items():
            for index, numeric in _numeric_parts(schema):
                bad_values = _outside(numeric) or [None]  # None: no declared range, the case fails
                for bad in bad_values:
                    value = bad
                    if index:  # one element of a tuple setting out of range, the others as default
                        value = list(_default(cls, name, base))
                        value[index[0]] = bad
                    cases.append(pytest.param(cls, prefix, base, name, value, id=f"{label}.{name}={value}"))
    return cases


@pytest.mark.parametrize(("cls", "prefix", "base", "name", "value"), _cases())
def test_every_numeric_setting_refuses_a_value_out_of_its_range(
    cls: type, prefix: str, base: dict[str, Any], name: str, value: Any
) -> None:
    assert value is not None, f"{prefix}.{name} is numeric but declares no range"
    with pytest.raises(ValueError, match=rf"^{prefix}\.{name}=.*: must be "):
        cls(**{**base, name: value})


def test_the_nested_distillation_settings_are_checked_with_efficientads() -> None:
    with pytest.raises(ValueError, match=r"model\.distillation\.steps=0: must be >= 1 \(efficientad\)"):
        EfficientAdSettings(distillation={"steps": 0})
    with pytest.raises(TypeError, match=r"model\.distillation\.no_such_setting"):
        EfficientAdSettings(distillation={"no_such_setting": 1})


# ----------------------------------------------------------------------------- the three reported cases


def test_zero_epochs_is_refused_by_name_before_any_work(tmp_path: Path) -> None:
    cfg = compose_config(["model=ulsad", "model.epochs=0"])
    with pytest.raises(ValueError, match=r"^model\.epochs=0: must be >= 1 \(ulsad\)$"):
        JobSpec.from_config(cfg)
    record = runner.run(cfg, tmp_path / "run")  # the job's record says so; no data was read
    assert record["status"] == "failed"
    assert record["error"] == "ValueError: model.epochs=0: must be >= 1 (ulsad)"


def test_a_zero_profiling_batch_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"^profile\.batch_size=0: must be >= 1$"):
        JobSpec.from_config(compose_config(["profile.batch_size=0"]))


def test_an_overflowing_learning_rate_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"^model\.lr=1e\+38: must be in \(0, 1\] \(ulsad\)$"):
        JobSpec.from_config(compose_config(["model=ulsad", "model.lr=1e38"]))


# ----------------------------------------------------------------------------- the other settings the spec reads


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (["eval_batch_size=0"], ValueError, r"^eval_batch_size=0: must be >= 1$"),
        (["fpr_limit=0"], ValueError, r"^fpr_limit=0: must be in \(0, 1\]$"),
        (["fpr_limit=1.5"], ValueError, r"^fpr_limit=1\.5: must be in \(0, 1\]$"),
        (["cache.max_gb=0"], ValueError, r"^cache\.max_gb=0: must be > 0$"),
        (["save_maps_per_defect=-1"], ValueError, r"^save_maps_per_defect=-1: must be >= 0$"),
        (["profile.warmup_batches=-1"], ValueError, r"^profile\.warmup_batches=-1: must be >= 0$"),
        (["profile.latency_calls=-1"], ValueError, r"^profile\.latency_calls=-1: must be >= 0$"),
        (["profile.timed_batches=0"], ValueError, r"^profile\.timed_batches=0: must be >= 1 when profile\.enabled"),
        (["model=patchcore", "model.num_neighbors=0"], ValueError, r"^model\.num_neighbors=0: must be >= 1 \(patchc"),
        (
            ["model=padim", "+model.no_such_setting=1"],
            TypeError,
            r"^model\.no_such_setting=1: not a setting of padim \(its settings: layers, n_features, batch_size\)$",
        ),
    ],
)
def test_the_spec_refuses_each_bad_setting_by_name(overrides: list[str], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        JobSpec.from_config(compose_config(overrides))


def test_every_top_level_numeric_setting_declares_a_range() -> None:
    assert {"eval_batch_size", "fpr_limit", "cache.max_gb", "save_maps_per_defect"} <= set(TOP_LEVEL_SETTINGS)
    for name, kind in TOP_LEVEL_SETTINGS.items():
        assert set(TypeAdapter(kind).json_schema()) & set(BOUNDS), f"{name} declares no range"


# ----------------------------------------------------------------------------- valid values as before


@pytest.mark.parametrize("name", list(MODELS))
def test_every_models_own_settings_pass_and_are_named_by_its_class(name: str) -> None:
    model_class, settings_class = MODELS[name]
    assert model_class.settings_class() is settings_class
    spec = JobSpec.from_config(compose_config([f"model={name}", "profile.enabled=false", "profile.timed_batches=0"]))
    assert spec.profile.timed_batches == 0  # not timed: no timed batch needed


def test_valid_values_convert_as_before() -> None:
    settings = UlsadSettings(lr=1, weight_decay=0, layers=["layer2"], blur_sigma=4, epochs=3)
    assert settings.lr == 1.0 and isinstance(settings.lr, float) and isinstance(settings.weight_decay, float)
    assert settings.layers == ("layer2",) and isinstance(settings.blur_sigma, float)
    assert EfficientAdSettings(map_quantiles=[0, 1]).map_quantiles == (0.0, 1.0)
    assert Ulsad(layers=["layer2", "layer3"]).layers == ["layer2", "layer3"]  # lists on the model, as before
    assert ProfileSpec(enabled=True, batch_size=8, warmup_batches=0, timed_batches=1, latency_calls=0).batch_size == 8

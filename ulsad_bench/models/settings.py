"""Settings declared once, with their ranges: a frozen dataclass per model (and per settings group).

Each model declares its hyperparameters as one frozen dataclass (``UlsadSettings``, ...) deriving
from :class:`Settings`: the names, defaults, types and ranges of ``conf/model/<name>.yaml``'s
values. A field's type carries its range as a pydantic constraint (:data:`Count`,
:data:`LearningRate`, ...: ``Annotated[int, Field(ge=1)]``), so the range is declared where the
setting is, and both the check and the tests read it from there (pydantic's schema of the class).
Constructing the dataclass checks and converts every field through pydantic (YAML's ``0`` for a
float becomes ``0.0``, a list for a tuple a tuple) and refuses a bad value with an error naming the
setting as it is written on the command line, the value and what is allowed, e.g.
``model.epochs=0: must be >= 1 (ulsad)``; checks across fields stay in the class's ``__post_init__``.

The model's constructor takes the settings as keyword arguments (:func:`adopt` sets them on the
model), :meth:`Settings.check` checks a ``model.*`` mapping without building anything (the job's
spec does so before any work), its ``hyperparameters()`` record starts from :func:`as_record`,
and a setting marked :func:`trains` is part of what a trained model depends on
(:func:`training_settings`: ULSAD's trained-model cache key).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import Field as DataclassField
from dataclasses import field, fields
from functools import cache
from typing import Annotated, Any, ClassVar, get_type_hints

from pydantic import Field, TypeAdapter, ValidationError

TRAINS = "trains"

# The ranges settings are declared with (a field's type; pydantic reads the constraint). Floats are
# finite: ``inf`` and ``nan`` are refused everywhere.
#: a number of things: epochs, steps, batch sizes, images, dimensions, neighbours
Count = Annotated[int, Field(ge=1)]
#: a number of things that may be none: warm-up batches, workers
CountOrNone = Annotated[int, Field(ge=0)]
#: an optimiser's step size; above 1 no model here trains, and huge values overflow float32
LearningRate = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
#: an L2 penalty's weight (Adam's weight_decay)
WeightDecay = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
#: a probability or a quantile
Probability = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
#: a part of a whole that keeps something of it (a sampling ratio, a share of the steps)
Fraction = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
#: a share strictly between none and all (PCA's explained variance ratio)
OpenFraction = Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]
#: a loss term's weight
Weight = Annotated[float, Field(ge=0, allow_inf_nan=False)]
#: a size or a scale that must be positive (a blur's sigma, gigabytes of a cache)
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
#: a size that may be zero
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
#: a random generator's seed (numpy's range)
Seed = Annotated[int, Field(ge=0, lt=2**32)]

#: pydantic's error types of a value outside its declared range (the message then gives the range only)
RANGE_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal"})
KINDS = {
    "integer": "an integer",
    "number": "a finite number",
    "boolean": "true or false",
    "string": "a string",
    "null": "null",
    "object": "a mapping",
}
#: each model's settings class by the model's name (``model.name``): :meth:`Settings.__init_subclass__`
SETTINGS_CLASSES: dict[str, type[Settings]] = {}


def _range(schema: Mapping[str, Any]) -> str:
    """``in (0, 1]``, ``>= 1``, ... of a numeric JSON schema ('' for none)."""
    low = [(b, schema[k]) for k, b in (("minimum", "["), ("exclusiveMinimum", "(")) if k in schema]
    high = [(b, schema[k]) for k, b in (("maximum", "]"), ("exclusiveMaximum", ")")) if k in schema]
    if low and high:
        return f"in {low[0][0]}{low[0][1]}, {high[0][1]}{high[0][0]}"
    if low:
        return f"{'>=' if low[0][0] == '[' else '>'} {low[0][1]}"
    if high:
        return f"{'<=' if high[0][0] == ']' else '<'} {high[0][1]}"
    return ""


def describe(schema: Mapping[str, Any], range_only: bool = False) -> str:
    """What a JSON schema allows, in words: ``an integer >= 1``, ``>= 1 or null`` (``range_only``:
    numbers by their range alone), ``2 values, each in [0, 1]``."""
    if "anyOf" in schema:
        return " or ".join(describe(option, range_only) for option in schema["anyOf"])
    if schema.get("type") == "array":
        items = schema.get("prefixItems") or [schema.get("items", {})]
        count = f"{len(items)} values" if "prefixItems" in schema else "a list"
        each = {describe(item, range_only) for item in items}
        return f"{count}, each {each.pop()}" if len(each) == 1 else f"{count}: " + ", ".join(sorted(each))
    bounds = _range(schema)
    if bounds and range_only:
        return bounds
    return f"{KINDS.get(str(schema.get('type')), 'any value')} {bounds}".strip()


def _reason(schema: Mapping[str, Any]) -> str:
    """A declared range's ``description`` (why it is what it is), searched through the schema."""
    if "description" in schema:
        return str(schema["description"])
    options = [*schema.get("anyOf", []), *schema.get("prefixItems", [])]
    return next((r for r in map(_reason, options) if r), "")


@cache
def _adapter(kind: Any) -> TypeAdapter[Any]:
    """pydantic's validator of a declared type, built once per type."""
    return TypeAdapter(kind)


def refusal(setting: str, value: Any, kind: Any, err: ValidationError, model: str = "") -> str:
    """The message refusing ``setting=value`` (``kind``: its declared type): the setting, the value,
    what is allowed (its range alone when the value is out of it), the range's reason, the model."""
    schema = _adapter(kind).json_schema()
    range_only = all(e["type"] in RANGE_ERRORS for e in err.errors())
    reason = _reason(schema)
    text = f"{setting}={value!r}: must be {describe(schema, range_only)}" + (f": {reason}" if reason else "")
    return text + (f" ({model})" if model else "")


def check_value(setting: str, value: Any, kind: Any, model: str = "") -> Any:
    """``value`` checked and converted to ``kind`` (a declared type such as :data:`Count`), or a
    ``ValueError`` naming ``setting``."""
    try:
        return _adapter(kind).validate_python(value)
    except ValidationError as err:
        raise ValueError(refusal(setting, value, kind, err, model)) from None


@cache
def _field_types(settings_class: type) -> dict[str, Any]:
    """Each field's declared type (with its range), resolved once per class."""
    hints = get_type_hints(settings_class, include_extras=True)
    return {item.name: hints[item.name] for item in fields(settings_class)}


class Settings:
    """Base of a settings class (module docstring): ``@dataclass(frozen=True) class
    UlsadSettings(Settings, model="ulsad")`` declares ``model.*`` of ``model=ulsad`` and registers
    it under that name (:func:`settings_class_of`); ``group`` is the settings' prefix on the command
    line (``model``, ``model.distillation``, ``profile``). A subclass's own ``__post_init__`` calls
    this one's first, then checks across fields."""

    #: the settings' prefix on the command line, and the model they belong to ('' for none)
    group: ClassVar[str] = ""
    model: ClassVar[str] = ""

    def __init_subclass__(cls, group: str = "model", model: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.group, cls.model = group, model
        if group == "model" and model:
            SETTINGS_CLASSES[model] = cls

    def __post_init__(self) -> None:
        """Every field checked against its declared type and range, and converted to it."""
        for name, kind in _field_types(type(self)).items():
            converted = check_value(f"{self.group}.{name}", getattr(self, name), kind, self.model)
            object.__setattr__(self, name, converted)

    @classmethod
    def check(cls, values: Mapping[str, Any]) -> Settings:
        """The settings of ``values`` (``model.*`` as the model's constructor takes them), checked;
        a name that is not a setting is refused by name (``TypeError``), a bad value as in
        :meth:`__post_init__` (``ValueError``)."""
        names = [item.name for item in fields(cls)]
        for key, value in values.items():
            if key not in names:
                owner = f" of {cls.model}" if cls.model else ""
                raise TypeError(f"{cls.group}.{key}={value!r}: not a setting{owner} (its settings: {', '.join(names)})")
        return cls(**values)


def settings_class_of(model: str) -> type[Settings] | None:
    """The settings class of ``model=<model>``, None when its module declares none."""
    return SETTINGS_CLASSES.get(model)


def trains(default: Any) -> Any:
    """A setting the trained networks depend on (the trained-model cache keys on it)."""
    return field(default=default, metadata={TRAINS: True})


def training_settings(settings_class: type) -> tuple[str, ...]:
    """The names of the settings marked :func:`trains`, in declaration order."""
    return tuple(f.name for f in fields(settings_class) if f.metadata.get(TRAINS))


def adopt(model: Any, settings: Any) -> None:
    """``model.settings`` and each setting as an attribute of the model (lists for tuples)."""
    model.settings = settings
    for item in fields(settings):
        value = getattr(settings, item.name)
        setattr(model, item.name, list(value) if isinstance(value, tuple) else value)


def as_record(model: Any, settings_class: type, **resolved: Any) -> dict[str, Any]:
    """Every setting as the model holds it (``resolved``: values settled at set-up replace theirs)."""
    names: list[DataclassField[Any]] = list(fields(settings_class))
    return {item.name: resolved.get(item.name, getattr(model, item.name)) for item in names}

"""Recipes: a YAML file validated into a typed :class:`Recipe`.

``load_recipe(path, overrides)`` applies ``--set key.path=value`` overrides (values parsed
as YAML) before validation. Every error names the file, the field path and what was
expected, e.g. ``recipes/x.yaml: train.lr: expected a number, got 'abc'``; an unknown key
is an error with a suggestion.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rsvision.errors import UserError
from rsvision.mred import MODES


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ModelConfig(_Section):
    backbone: str
    head: str = "classifier"
    num_classes: int = Field(1000, ge=1)
    pretrained: str | None = None
    shared_bn: bool = False
    backbone_args: dict[str, Any] = Field(default_factory=dict)
    head_args: dict[str, Any] = Field(default_factory=dict)


class DataConfig(_Section):
    dataset: str
    root: str | None = None
    batch_size: int = Field(256, ge=1)
    eval_batch_size: int | None = Field(None, ge=1)
    workers: int = Field(4, ge=0)
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    multi_crop: bool = False
    normalize: bool = True
    #: Segmentation: random rescale factor of the training image before the crop.
    scale_range: tuple[float, float] = (0.5, 2.0)
    args: dict[str, Any] = Field(default_factory=dict)

    @field_validator("crop_scale", "crop_ratio", "scale_range")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"expected 0 < low <= high, got {list(v)}")
        return v


class TrainConfig(_Section):
    epochs: int = Field(120, ge=1)
    optimizer: Literal["sgd"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0)
    nesterov: bool = False
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    milestones: list[int] = Field(default_factory=list)
    gamma: float = Field(0.1, gt=0)
    warmup_epochs: float = Field(0.0, ge=0)
    seed: int = 0
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    grad_accum: int = Field(1, ge=1)
    max_steps_per_epoch: int | None = Field(None, ge=1)
    val_every: int = Field(1, ge=1)
    sync_bn: bool = False
    memory: Literal["standard", "low"] = "standard"
    channels_last: bool = False
    compile: bool = False

    @model_validator(mode="after")
    def _milestones(self) -> "TrainConfig":
        if self.schedule == "step" and not self.milestones:
            raise ValueError("schedule 'step' needs train.milestones (epochs at which lr is multiplied by gamma)")
        return self


class MREDConfig(_Section):
    mode: str = "full"

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_off(cls, v: Any) -> Any:
        """YAML reads a bare ``off`` as false."""
        return "off" if v is False else v

    @field_validator("mode")
    @classmethod
    def _mode(cls, v: str) -> str:
        if v not in MODES:
            raise ValueError(f"expected one of {', '.join(MODES)}, got '{v}'")
        return v


class QuantConfig(_Section):
    method: str = "lq"
    weight_bits: int = Field(2, ge=1, le=8)
    act_bits: int | None = Field(None, ge=1, le=8)
    quantize_first: bool = False
    quantize_last: bool = False


class Recipe(_Section):
    task: str
    resolutions: list[int] = Field(min_length=1)
    model: ModelConfig
    data: DataConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    mred: MREDConfig = Field(default_factory=MREDConfig)
    quant: QuantConfig | None = None
    output_dir: str = "runs"
    name: str | None = None
    plugins: list[str] = Field(default_factory=list)

    @field_validator("resolutions")
    @classmethod
    def _resolutions(cls, v: list[int]) -> list[int]:
        if any(r <= 0 for r in v):
            raise ValueError(f"expected positive sizes, got {v}")
        if len(set(v)) != len(v):
            raise ValueError(f"expected distinct sizes, got {v}")
        return sorted(v, reverse=True)


def _section_fields(loc: tuple) -> list[str]:
    """Field names allowed at the parent of ``loc`` (for 'did you mean' on unknown keys)."""
    model: type[BaseModel] | None = Recipe
    for part in loc[:-1]:
        info = model.model_fields.get(part) if model else None
        ann = getattr(info, "annotation", None)
        model = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return list(model.model_fields) if model else []


_EXPECTED = {
    "float_parsing": "expected a number",
    "float_type": "expected a number",
    "int_parsing": "expected an integer",
    "int_type": "expected an integer",
    "int_from_float": "expected an integer",
    "bool_parsing": "expected true or false",
    "bool_type": "expected true or false",
    "string_type": "expected a string",
    "list_type": "expected a list",
    "dict_type": "expected a mapping",
    "tuple_type": "expected a list of two numbers",
    "missing": "missing required field",
}


def format_validation_error(source: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not isinstance(p, str) or not p.startswith("function-"))
        path = ".".join(str(p) for p in loc) or "(top level)"
        kind = e["type"]
        if kind == "extra_forbidden":
            close = difflib.get_close_matches(str(loc[-1]), _section_fields(loc), n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            lines.append(f"{source}: {path}: unknown key{hint}")
        elif kind in _EXPECTED and kind != "missing":
            lines.append(f"{source}: {path}: {_EXPECTED[kind]}, got {e['input']!r}")
        elif kind == "missing":
            lines.append(f"{source}: {path}: missing required field")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{source}: {path}: {msg}, got {e['input']!r}" if "got" not in msg else f"{source}: {path}: {msg}")
    return "\n".join(lines)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``'train.epochs=1'`` → (['train', 'epochs'], 1); the value is parsed as YAML."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. train.epochs=1")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        raise UserError(f"--set {item!r}: the value is not valid YAML ({exc})") from None
    return key.strip().split("."), parsed


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    for item in overrides:
        keys, value = parse_override(item)
        node = data
        for k in keys[:-1]:
            child = node.get(k)
            if child is None:
                child = node[k] = {}
            if not isinstance(child, dict):
                raise UserError(f"--set {item!r}: '{k}' is not a section")
            node = child
        node[keys[-1]] = value
    return data


def validate_recipe(data: Any, source: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a mapping of recipe sections, got {type(data).__name__}")
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        raise UserError(format_validation_error(source, err)) from None


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, override and validate a recipe file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({exc})") from None
    if isinstance(data, dict):
        apply_overrides(data, overrides)
    return validate_recipe(data, str(path))

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
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from rsvision.constants import (
    DEFAULT_SEED,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MRED_MODES,
    RUNS_DIR,
)
from rsvision.errors import UserError
from rsvision.registry import DATASETS, METHODS, TASKS, RegistryError
from rsvision.subnet import SubNet


#: Default of ``max_resolution``: above the sizes detection trains at (800-1333) and below
#: those a typo gives.
MAX_RESOLUTION = 2048


def _dataset_task(name: str) -> str | None:
    """The task whose samples the registered dataset ``name`` gives (its builder's ``task``
    attribute: ``cls``, ``seg``, ``det``); None when it does not say, or is not registered yet
    (a plugin's, loaded after validation)."""
    try:
        return getattr(DATASETS.get(name), "task", None)
    except RegistryError:
        return None


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ModelConfig(_Section):
    backbone: str
    head: str = "classifier"
    #: Outputs of the network; unset: the number of classes the training data names.
    num_classes: int | None = Field(None, ge=1)
    #: Starting weights: true (the library's default), a tag (timm's ``c3_in1k``, torchvision's
    #: ``IMAGENET1K_V1``), a file; unset: the tag in a timm backbone's name, if any; false: none.
    pretrained: bool | str | None = None
    shared_bn: bool = False
    #: Image channels the network takes (3; 1 for grey data such as MNIST-format files).
    in_channels: int = Field(3, ge=1)
    backbone_args: dict[str, Any] = Field(default_factory=dict)
    head_args: dict[str, Any] = Field(default_factory=dict)


class DataConfig(_Section):
    """The data section's own fields; the task's fields (``crop_scale``, ``scale_range``, ...)
    are extra keys here, validated by the task (:func:`task_fields`)."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    dataset: str
    root: str | None = None
    batch_size: int = Field(256, ge=1)
    eval_batch_size: int | None = Field(None, ge=1)
    workers: int = Field(4, ge=0)
    #: On a CPU the loader processes run only where the compute threads leave cores free
    #: (:func:`rsvision.data.workers.loader_workers`); true starts ``workers`` of them anyway.
    oversubscribe: bool = False
    #: ``(x - mean) / std`` of [0, 1] inputs (ImageNet's statistics by default); false: [0, 1] inputs.
    normalize: bool = True
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    #: How the S training resolutions are made: ``batch`` resizes whole batches on the
    #: training device, ``sample`` resizes every image to every resolution in the workers.
    resize: Literal["batch", "sample"] = "batch"
    #: ``memory``: decode every sample once and keep it in RAM; ``auto``: so when the dataset's
    #: samples are fixed, the run reads them more than once and they fit in an eighth of
    #: the machine's memory (:func:`rsvision.data.cache.cache_choice`); ``none``: never.
    cache: Literal["auto", "none", "memory"] = "auto"
    #: A fraction of the training split held out as the validation split (seeded by
    #: ``train.seed``), for data with one split (an image folder without ``val/``); unset: the
    #: dataset's own ``val`` split.
    val_split: float | None = Field(None, gt=0, lt=1)
    args: dict[str, Any] = Field(default_factory=dict)

    @field_validator("std")
    @classmethod
    def _positive(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(s <= 0 for s in v):
            raise ValueError(f"expected positive values, got {list(v)}")
        return v


class MixupConfig(_Section):
    """Mixup / CutMix through timm's ``Mixup`` (its argument names), drawn once per batch."""

    #: Beta(alpha, alpha) of mixup's weight; 0: no mixup.
    mixup_alpha: float = Field(0.8, ge=0)
    #: Beta(alpha, alpha) of CutMix's box area; 0: no CutMix.
    cutmix_alpha: float = Field(1.0, ge=0)
    #: Probability that a batch is mixed at all.
    prob: float = Field(1.0, ge=0, le=1)
    #: With both on: probability of CutMix instead of mixup.
    switch_prob: float = Field(0.5, ge=0, le=1)

    @model_validator(mode="after")
    def _one_on(self) -> "MixupConfig":
        if not self.mixup_alpha and not self.cutmix_alpha:
            raise ValueError("mixup_alpha and cutmix_alpha are both 0: nothing to mix (remove train.mixup)")
        return self


class TrainConfig(_Section):
    epochs: int = Field(120, ge=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0)
    nesterov: bool = False
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    milestones: list[int] = Field(default_factory=list)
    gamma: float = Field(0.1, gt=0)
    warmup_epochs: float = Field(0.0, ge=0)
    seed: int = DEFAULT_SEED
    #: Autocast dtype; unset (null): the launcher's (``accelerate launch --mixed_precision`` or
    #: the saved ``accelerate config``), else ``no``. The run records which one it used.
    mixed_precision: Literal["no", "fp16", "bf16"] | None = None
    grad_accum: int = Field(1, ge=1)
    max_steps_per_epoch: int | None = Field(None, ge=1)
    val_every: int = Field(1, ge=1)
    sync_bn: bool = False
    memory: Literal["standard", "low"] = "standard"
    #: Memory layout: ``device`` follows a fixed rule (channels-last on CUDA and CPUs,
    #: contiguous elsewhere); ``auto`` times the first training steps in each layout and keeps the
    #: faster (the choice, and so the weights, can then depend on the machine's load).
    channels_last: bool | Literal["device", "auto"] = "device"
    compile: bool = False
    #: Experiment trackers, through Accelerate: ``csv`` and ``tensorboard`` write into the run
    #: folder; ``wandb``, ``mlflow``, ... take the run's name as their project.
    log_with: list[str] = Field(default_factory=list)
    #: Label smoothing epsilon of the cross-entropy against the labels (L_cls; MRED's L_ens
    #: and L_dis stay the paper's); 0: off.
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    #: Keep a copy of the best evaluated epoch in ``best/`` (a run folder), ranked by
    #: ``METRIC`` (its mean over the trained sub-networks) or ``METRIC/SUBNET`` (e.g.
    #: ``top1/ensemble``); higher is better. Unset: off.
    keep_best: str | None = None
    #: Decay of an exponential moving average of the weights and BN statistics, updated after
    #: every optimiser step, evaluated per sub-network each evaluated epoch (``val_ema`` in
    #: ``log.jsonl``) and saved as the run folder ``ema/``; e.g. 0.999. Unset: off.
    ema: float | None = Field(None, gt=0, lt=1)
    #: Mixup / CutMix of the training batches (classification, RS-Nets): ``{}`` for timm's
    #: usual setting (mixup 0.8, CutMix 1.0, switching half the time); unset: off.
    mixup: MixupConfig | None = None

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
        if v not in MRED_MODES:
            raise ValueError(f"expected one of {', '.join(MRED_MODES)}, got '{v}'")
        return v


#: Annotations of ``WidthsConfig``, whose field names ``range`` and ``list`` hide the builtins.
_WidthPair = tuple[float, float]
_WidthList = list[float]


class WidthsConfig(_Section):
    """The width axis (MutualNet): which widths, how BN serves them, how they are trained.

    Exactly one of ``range`` (any width in [low, high]) and ``list`` (those widths only).
    """

    range: _WidthPair | None = None
    list: _WidthList | None = None
    #: Channels at width w: make_divisible(w * C, divisor), the official rounding (nearest
    #: multiple, at least ``divisor``, never below 90 % of w * C).
    divisor: int = Field(8, ge=1)
    #: ``posthoc``: one BN shared in training (batch statistics), statistics recomputed per
    #: (width, resolution) afterwards; ``private``: a BN per (width, resolution) of ``list``.
    bn: Literal["posthoc", "private"] = "posthoc"
    #: Sub-networks per step (sandwich rule): the full width, the smallest, sample - 2 random ones.
    sample: int = Field(4, ge=2)
    #: ``largest``: the full width at the largest resolution learns from the labels and
    #: teaches the others (MutualNet Eq. 2-4); ``ensemble``: it runs every resolution with
    #: MRED (``mred.mode``) and the others learn from the alpha-ensemble.
    teacher: Literal["largest", "ensemble"] = "largest"
    #: What the other sub-networks learn from: ``distill``, the teacher's detached prediction
    #: (in-place distillation, Eq. 3); ``labels``, the labels (cross-entropy, as §4.3's detection runs).
    students: Literal["distill", "labels"] = "distill"
    #: Beyond the paper: the students' loss weight ramps linearly from 0 to 1 over this many
    #: epochs; 0: weight 1 from the first step (Eq. 4).
    student_ramp_epochs: float = Field(0.0, ge=0)
    #: Training images whose BN statistics are recomputed before each validation (posthoc BN).
    calibration_images: int = Field(256, ge=1)
    #: Images the post-hoc statistics are measured on: ``eval``, the evaluation view (resize,
    #: centre crop); ``train``, the training augmentation (the official ComputePostBN).
    calibration_view: Literal["eval", "train"] = "eval"
    #: Weight decay on ``all`` parameters, or on ``conv_fc``: weights of convolutions and
    #: linear layers except depthwise ones (MutualNet's official code).
    decay: Literal["all", "conv_fc"] = "all"
    #: Build and print the query table after training (every grid point calibrated and
    #: evaluated: for small runs; ``rsvision query`` does the same later).
    query: bool = False

    @field_validator("range")
    @classmethod
    def _range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not 0 < v[0] < v[1] <= 1:
            raise ValueError(f"expected 0 < low < high <= 1, got {list(v)}")
        return v

    @field_validator("list")
    @classmethod
    def _list(cls, v: list[float] | None) -> list[float] | None:
        if v is None:
            return v
        if not v or any(not 0 < w <= 1 for w in v):
            raise ValueError(f"expected widths in (0, 1], got {v}")
        if len(set(v)) != len(v):
            raise ValueError(f"expected distinct widths, got {v}")
        if any(abs(w * 100 - round(w * 100)) > 1e-6 for w in v):
            raise ValueError(f"expected widths on a 0.01 grid (they name sub-networks, e.g. 160w35), got {v}")
        return sorted(v, reverse=True)

    @model_validator(mode="after")
    def _one_kind(self) -> "WidthsConfig":
        if (self.range is None) == (self.list is None):
            raise ValueError("give exactly one of range: [low, high] and list: [w1, w2, ...]")
        if self.bn == "private" and self.list is None:
            raise ValueError("bn: private keeps a BN per width, so it needs list: [...] (a range has infinitely many widths; use bn: posthoc)")
        if self.bn == "private" and "calibration_view" in self.model_fields_set:
            raise ValueError("calibration_view: only read with bn: posthoc (private BN keeps the statistics it trained); remove it")
        return self

    @property
    def bounds(self) -> tuple[float, float]:
        """(smallest, largest) width."""
        values = self.range if self.range is not None else self.list
        return min(values), max(values)

    @property
    def trained(self) -> list[float]:
        """The widths that name the trained sub-networks: the list, or a range's two ends."""
        return list(self.list) if self.list is not None else [self.bounds[1], self.bounds[0]]


class QuantConfig(_Section):
    method: str = "lq"
    weight_bits: int = Field(2, ge=1, le=8)
    act_bits: int | None = Field(None, ge=1, le=8)
    quantize_first: bool = False
    quantize_last: bool = False


class Recipe(_Section):
    task: str
    resolutions: list[int] = Field(min_length=1)
    #: The largest training size a recipe may ask for: a bound against a typo (``20000`` for
    #: ``200``) that would end in the allocator after the run folder was made.
    max_resolution: int = Field(MAX_RESOLUTION, ge=1)
    model: ModelConfig
    data: DataConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    mred: MREDConfig = Field(default_factory=MREDConfig)
    quant: QuantConfig | None = None
    widths: WidthsConfig | None = None
    output_dir: str = RUNS_DIR
    name: str | None = None
    plugins: list[str] = Field(default_factory=list)

    #: The file the recipe came from, named in every error about it.
    _source: str = PrivateAttr("recipe")

    @field_validator("resolutions")
    @classmethod
    def _resolutions(cls, v: list[int]) -> list[int]:
        if any(r <= 0 for r in v):
            raise ValueError(f"expected positive sizes, got {v}")
        if len(set(v)) != len(v):
            raise ValueError(f"expected distinct sizes, got {v}")
        return sorted(v, reverse=True)

    @model_validator(mode="after")
    def _bounded_sizes(self) -> "Recipe":
        over = [r for r in self.resolutions if r > self.max_resolution]
        if over:
            raise ValueError(f"resolutions: {over[0]} is above max_resolution ({self.max_resolution}); set max_resolution: {over[0]} if that size is meant")
        return self

    @model_validator(mode="after")
    def _data_for_task(self) -> "Recipe":
        served, kinds = _dataset_task(self.data.dataset), {_dataset_task(name) for name in DATASETS.list()}
        if served is not None and served != self.task and self.task in kinds:
            fitting = sorted(name for name in DATASETS.list() if _dataset_task(name) == self.task)
            raise ValueError(f"data.dataset: '{self.data.dataset}' gives samples for task '{served}', not '{self.task}'; datasets for '{self.task}': {', '.join(fitting)}")
        return self

    @model_validator(mode="after")
    def _normalization_channels(self) -> "Recipe":
        c = self.model.in_channels
        for name in ("mean", "std"):
            values = getattr(self.data, name)
            if len(values) != c:
                raise ValueError(f"data.{name} has {len(values)} values but model.in_channels is {c}; give one per channel")
        return self

    @model_validator(mode="after")
    def _widths_alone(self) -> "Recipe":
        if self.widths is None:
            return self
        if self.model.shared_bn:
            raise ValueError("model.shared_bn: a width recipe chooses its BN with widths.bn (posthoc: shared in training, or private); remove it")
        if self.quant is not None:
            raise ValueError("quant: quantized width-switchable networks are not supported; remove quant or widths")
        if self.train.sync_bn:
            raise ValueError(
                "train.sync_bn: not supported with widths (a narrower width normalises the first channels of each BN, "
                "SyncBatchNorm all of them); set it to false or remove widths"
            )
        return self

    @property
    def source(self) -> str:
        return self._source

    @property
    def method(self) -> str:
        """The registered training method: ``mutualnet`` with a ``widths`` section, else the
        task's own when it names one (its ``training_method``, e.g. detection's ``parallel``),
        else ``rsnets``."""
        if self.widths is not None:
            return "mutualnet"
        own = getattr(TASKS.get(self.task), "training_method", None) if self.task in TASKS.list() else None
        return own or "rsnets"

    @property
    def subnets(self) -> list[SubNet]:
        """The sub-networks trained by this recipe, widest first, then largest resolution first.

        With ``widths``: every (width, resolution) of a list, or of a range's two ends.
        """
        if self.widths is None:
            return [SubNet(r) for r in self.resolutions]
        return [SubNet(r, w) for w in self.widths.trained for r in self.resolutions]


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


def format_validation_error(source: str, err: ValidationError, prefix: tuple[str, ...] = ()) -> str:
    """One line per error, naming the dotted field (under ``prefix``, for a section validated on its own)."""
    lines = []
    for e in err.errors():
        loc = prefix + tuple(p for p in e["loc"] if not isinstance(p, str) or not p.startswith("function-"))
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
        elif not loc:  # a check across sections: its message names the fields
            lines.append(f"{source}: {e['msg'].removeprefix('Value error, ')}")
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
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        raise UserError(format_validation_error(source, err)) from None
    recipe._source = source
    return recipe


#: Fields that only some choices read: the field, and the condition under which it is read.
#: A condition on a section the recipe does not have (``widths``) does not apply.
_CONDITIONAL = {
    "train.milestones": ("train.schedule", "step"),
    "train.gamma": ("train.schedule", "step"),
    "train.momentum": ("train.optimizer", "sgd"),
    "train.nesterov": ("train.optimizer", "sgd"),
    "mred.mode": ("widths.teacher", "ensemble"),
    "widths.calibration_images": ("widths.bn", "posthoc"),
}


def fields_set(recipe: Recipe) -> list[str]:
    """Dotted names of the fields a recipe gives explicitly (its file, ``--set`` or dict)."""
    out = []
    for section in recipe.model_fields_set:
        value = getattr(recipe, section)
        if isinstance(value, BaseModel):
            out += [f"{section}.{name}" for name in value.model_fields_set]
        else:
            out.append(section)
    return out


def _readers(name: str) -> list[str]:
    """The registered tasks and training methods that read the optional field ``name``."""
    return [n for registry in (TASKS, METHODS) for n in registry.list() if name in getattr(registry.get(n), "recipe_fields", ())]


def check_unused(recipe: Recipe, optional_fields_read: set[str]) -> None:
    """A field given in the recipe that nothing reads is an error naming it.

    ``optional_fields_read``: the optional fields the chosen task and training method read
    (their ``recipe_fields``); a field only other registered tasks or methods declare does
    nothing for them.
    """
    for name in fields_set(recipe):
        readers = _readers(name)
        if readers and name not in optional_fields_read:
            who = f"task '{recipe.task}'" if name.startswith("data.") else f"training method '{recipe.method}'"
            raise UserError(f"{recipe.source}: {name}: {who} does not use it (it is read by: {', '.join(readers)}); remove it")
        if name in _CONDITIONAL:
            key, wanted = _CONDITIONAL[name]
            section, field = key.split(".")
            if getattr(recipe, section) is None:
                continue
            actual = getattr(getattr(recipe, section), field)
            if actual != wanted:
                raise UserError(f"{recipe.source}: {name}: only read when {key} is '{wanted}' (it is '{actual}'); remove it")


class TaskFields(BaseModel):
    """Base of a task's own ``data`` fields (:attr:`rsvision.tasks.Task.data_fields`); unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")


def ordered_pair(v: tuple[float, float]) -> tuple[float, float]:
    """A ``(low, high)`` range with ``0 < low <= high`` (for task field validators)."""
    if not 0 < v[0] <= v[1]:
        raise ValueError(f"expected 0 < low <= high, got {list(v)}")
    return v


def task_fields(recipe: Recipe, schema: type[BaseModel]) -> BaseModel:
    """The task's own fields of ``recipe.data`` (its extra keys), validated with ``schema``.

    Their values, defaults included, are also set on ``recipe.data`` (``recipe.data.crop_scale``).
    A key another registered task reads is left to :func:`check_unused` (a run's saved recipe
    holds every field of its time); any other unknown key is an error naming it.
    """
    extra = dict(recipe.data.model_extra or {})
    own = {k: v for k, v in extra.items() if k in schema.model_fields}
    for key in sorted(extra.keys() - own.keys()):
        if not _readers(f"data.{key}"):
            close = difflib.get_close_matches(key, [*DataConfig.model_fields, *schema.model_fields], n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise UserError(f"{recipe.source}: data.{key}: unknown key{hint}")
    try:
        fields = schema.model_validate(own)
    except ValidationError as err:
        raise UserError(format_validation_error(recipe.source, err, prefix=("data",))) from None
    recipe.data.__pydantic_extra__.update(fields.model_dump())
    return fields


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

"""A job spec checked and completed at submit time, so a bad spec never becomes a job that fails later.

The API layer turns the JobSpec message into a plain dict with the proto's zero values left in
(enums as lowercase names, "" when unspecified) and the architecture as the nn package's dict
form; a field the proto marks `optional` is in it when set, 0 included, so that a 0 written
out is checked as a value instead of taking the default. `normalize_spec` applies the
documented defaults and checks everything that can be checked before running: the
architecture, the dataset's version, splits and arrays, the model's input shape against the
data, and the devices. It reports every problem at once, each
as "spec.<path>: what is wrong", in one error. `SPEC_FIELDS` describes the plain spec's fields
and their types (what a sweep may set, and how its text values parse).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tesserad.dtypes import INTEGER_DTYPES
from tesserad.errors import FailedPrecondition, InvalidArgument, TesseraError
from tesserad.names import RESERVED_ALIASES, not_one_of, validate_name, version_like_alias
from tesserad.nn.specs import FAMILIES as ARCHITECTURE_FAMILIES
from tesserad.nn.specs import (
    ArchitectureSpec,
    PythonSpec,
    batch_norm_values_per_sample,
    channel_axis_advice,
    family_of,
    sample_layout,
    spec_problems,
    spec_to_dict,
    unchecked_spec_from_dict,
)
from tesserad.nn.user_modules import file_sha256, find_entry_file
from tesserad.text import entry_problems, record_text_problem
from tesserad.training.finetune import ParentLookup, check_fine_tuning, check_parent

OPTIMIZERS = ("sgd", "adam", "adamw")
PRECISIONS = ("fp32", "bf16", "fp16")
REGRESSION_LOSSES = ("mse", "l1", "huber")
# The experiment of a job whose spec names none.
DEFAULT_EXPERIMENT = "default"
DEFAULT_TRAIN_SPLIT = "train"
# Far beyond any real job, and low enough that epochs x steps per epoch (at most one step per
# sample) stays within the int64 the API counts a job's steps in.
MAX_EPOCHS = 1_000_000
# A job trained by steps alone is bounded only by this: about MAX_EPOCHS epochs of 1000 steps,
# far beyond any real job, where a larger one is a typo or a job that runs until cancelled.
MAX_STEPS = 1_000_000_000
# Far above the rates sgd, adam and adamw train at (1e-5..1): a larger one is a typo (1e3 for
# 1e-3) that diverges, and a loss that stays finite would otherwise end as a succeeded job.
MAX_LR = 10.0


@dataclass(frozen=True)
class DatasetFacts:
    """What submit-time checks need to know about one dataset version."""

    name: str
    version: int
    sha256: str
    arrays: dict[str, tuple[str, tuple[int, ...]]]  # name -> (numpy dtype name, shape)
    splits: dict[str, int]  # name -> sample count
    # name -> (min, max) over the array's finite values; unknown arrays go unchecked.
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    # Whether every finite value of the named array is a whole number: read from the data only
    # where a message asks it (float class ids), never on a submit that passes.
    whole: Callable[[str], bool] = lambda _array: False


@dataclass(frozen=True)
class DeviceFacts:
    cpu_slots: int
    gpu_count: int


def epoch_metric_names(task: str, has_val: bool) -> list[str]:
    names = ["train_loss"]
    if task == "classification":
        names.append("train_accuracy")
    if has_val:
        names.append("val_loss")
        names += ["val_accuracy"] if task == "classification" else ["val_mae", "val_rmse", "val_r2"]
    return names


# Names that say lower is better: losses, errors, and the error measures a regression job logs
# (val_mae, val_rmse); "mse" also covers rmse and msle.
_LOWER_IS_BETTER = ("loss", "error", "mae", "mse", "mape")


def default_mode(metric: str) -> str:
    """min for a metric whose name says it is a loss or an error, else max."""
    lowered = metric.lower()
    return "min" if any(word in lowered for word in _LOWER_IS_BETTER) else "max"


def _mode(mode: str, metric: str) -> str:
    return mode or default_mode(metric)


# -- the plain spec's fields


@dataclass(frozen=True)
class Choice:
    """An enum field: its values in the plain spec, and the prefix of the proto's names for
    them ("regression" is TASK_REGRESSION), so a value may be written either way."""

    values: tuple[str, ...]
    proto_prefix: str

    def parse(self, text: str) -> str | None:
        for value in self.values:
            if text.lower() == value or text.upper() == f"{self.proto_prefix}{value.upper()}":
                return value
        return None


@dataclass(frozen=True)
class SpecField:
    """One field of the plain spec: a single value of `value_type` (int, float, bool, str or a
    Choice), a message of `fields`, or a list or map."""

    kind: Literal["value", "message", "list"]
    value_type: type | Choice | None = None
    fields: Mapping[str, SpecField] = field(default_factory=dict)
    oneof: str = ""  # the oneof this field is a member of
    # A message whose `inline` oneof is stored flat: the member's name under this key, its
    # fields beside the message's own (the architecture's nn dict form: {"family": "mlp", ...}).
    inline: str = ""


def _value(value_type: type | Choice, oneof: str = "") -> SpecField:
    return SpecField("value", value_type, oneof=oneof)


def _message(fields: Mapping[str, SpecField], oneof: str = "", inline: str = "") -> SpecField:
    return SpecField("message", fields=fields, oneof=oneof, inline=inline)


_LIST = SpecField("list")
_MODE = Choice(("min", "max"), "OPTIMIZE_MODE_")


def _hyperparameter(f: dataclasses.Field[Any]) -> SpecField:
    if f.name == "kwargs":  # the python family's: a google.protobuf.Struct, its keys the class's own
        return _message({"fields": _LIST})
    return _LIST if isinstance(f.default, tuple) else _value(type(f.default))


def _architecture_fields() -> dict[str, SpecField]:
    """The Architecture message, from the nn specs' fields (their defaults give the types)."""
    families: dict[str, SpecField] = {}
    for family, cls in ARCHITECTURE_FAMILIES.items():
        hyperparameters = {
            f.name: _hyperparameter(f)
            for f in dataclasses.fields(cls)
            if f.name not in ("input_shape", "output_size")
        }
        families[family] = _message(hyperparameters, oneof="family")
    return {"input_shape": _LIST, "output_size": _value(int), **families}


# Mirrors protos/tessera/v1/job_spec.proto (tests/unit/training compares the two).
SPEC_FIELDS: Mapping[str, SpecField] = {
    "experiment": _value(str),
    "run_name": _value(str),
    "architecture": _message(_architecture_fields(), inline="family"),
    "task": _value(Choice(("classification", "regression"), "TASK_")),
    "loss": _value(str),
    "data": _message(
        {
            "dataset": _message({"name": _value(str), "version": _value(int)}),
            "train_split": _value(str),
            "val_split": _value(str),
            "input_array": _value(str),
            "target_array": _value(str),
        }
    ),
    "optimizer": _message(
        {
            "name": _value(str),
            **{
                name: _value(float)
                for name in ("lr", "weight_decay", "momentum", "beta1", "beta2", "eps", "grad_clip_norm")
            },
            "nesterov": _value(bool),
        }
    ),
    "lr_schedule": _message(
        {
            "constant": _message({}, oneof="schedule"),
            "step": _message({"step_size": _value(int), "gamma": _value(float)}, oneof="schedule"),
            "cosine": _message({"min_lr": _value(float)}, oneof="schedule"),
            "one_cycle": _message({"max_lr": _value(float), "pct_start": _value(float)}, oneof="schedule"),
            "warmup_steps": _value(int),
        }
    ),
    "epochs": _value(int),
    "max_steps": _value(int),
    "batch_size": _value(int),
    "seed": _value(int),
    "early_stopping": _message(
        {"metric": _value(str), "mode": _value(_MODE), "patience": _value(int), "min_delta": _value(float)}
    ),
    "checkpoints": _message(
        {
            "every_n_epochs": _value(int),
            "keep_last": _value(int),
            "keep_best_metric": _value(str),
            "keep_best_mode": _value(_MODE),
            "retain_latest": _value(int),
            "retain_best": _value(int),
        }
    ),
    "devices": _message(
        {
            "cpu": _value(bool, oneof="kind"),
            "cuda": _message({"indices": _LIST}, oneof="kind"),
            "gpu_count": _value(int, oneof="kind"),
            "cpu_processes": _value(int),
            "ray_resources": _LIST,
        }
    ),
    "priority": _value(int),
    "register_as": _message({"model": _value(str), "alias": _value(str), "description": _value(str)}),
    "log_every_n_steps": _value(int),
    "tags": _LIST,
    "init_from": _message(
        {
            "model": _value(str),
            "version": _value(int, oneof="selector"),
            "alias": _value(str, oneof="selector"),
        }
    ),
    "freeze": _LIST,
    "replace_head": _message({"output_size": _value(int)}),
    "backbone_lr_scale": _value(float),
    "precision": _value(str),
    "resume_from": _value(str),
    "resume_weights_only": _value(bool),
    "max_restarts": _value(int),
}


# -- checking a spec


class _Problems:
    """Every problem found in one spec, with the error class each would raise alone. `root`: what
    the spec is called in the request ("spec" at submit), in place of the paths' "spec"."""

    def __init__(self, root: str = "spec") -> None:
        self.found: list[tuple[type[TesseraError], str]] = []
        self.root = root

    def add(self, kind: type[TesseraError], message: str) -> None:
        self.found.append((kind, message))

    def invalid(self, path: str, what: str) -> None:
        self.add(InvalidArgument, f"{self.root}{path.removeprefix('spec')}: {what}")

    def unmet(self, path: str, what: str) -> None:
        """A problem with what the spec refers to (a dataset's splits and arrays, a device):
        FAILED_PRECONDITION."""
        self.add(FailedPrecondition, f"{path}: {what}")

    def name(self, path: str, value: str) -> str:
        try:
            validate_name(path, value)
        except InvalidArgument as exc:
            self.invalid(path, exc.message.removeprefix(path).lstrip())
        return value

    def nonneg(self, path: str, value: float) -> None:
        if not math.isfinite(value) or value < 0:
            self.invalid(path, f"must be a finite number >= 0, got {value}")

    def raise_if_any(self) -> None:
        """One error for them all: INVALID_ARGUMENT when any problem is with the spec's own values."""
        if not self.found:
            return
        if len(self.found) == 1:
            kind, message = self.found[0]
            raise kind(message)
        kinds = [kind for kind, _ in self.found]
        kind = InvalidArgument if InvalidArgument in kinds else kinds[0]
        lines = "\n".join(f"  {message}" for _, message in self.found)
        whose = "the spec" if self.root == "spec" else self.root
        raise kind(f"{whose} has {len(self.found)} problems:\n{lines}")


def normalize_spec(
    raw: dict[str, Any],
    dataset: Any,
    devices: DeviceFacts,
    parents: ParentLookup,
    module_paths: tuple[Path, ...] = (),
) -> dict[str, Any]:
    """The complete job config, or InvalidArgument / NotFound / FailedPrecondition naming every
    bad field.

    `dataset(name, version)` returns DatasetFacts or raises NotFound; `parents` looks up the
    version a fine-tuning job starts from (training.finetune); `module_paths` are the
    directories of training.module_paths, where the family python's module must be.
    """
    problems = _Problems()
    config: dict[str, Any] = {}
    config["experiment"] = problems.name("spec.experiment", raw.get("experiment") or DEFAULT_EXPERIMENT)
    if raw.get("run_name"):
        problems.name("spec.run_name", raw["run_name"])
    config["run_name"] = raw.get("run_name", "")

    parent, architecture = check_parent(raw, parents, problems.found)
    arch_spec = _check_architecture(architecture, problems) if architecture is not None else None
    if isinstance(arch_spec, PythonSpec):
        arch_spec = _check_module(arch_spec, module_paths, problems)
    config["architecture"] = spec_to_dict(arch_spec) if arch_spec is not None else None
    if parent is not None and arch_spec is not None:
        config["fine_tune"] = check_fine_tuning(raw, parent, config["architecture"], problems.found)

    task = raw.get("task") or "classification"
    config["task"] = task
    loss = raw.get("loss", "")
    if task == "classification":
        if loss not in ("", "cross_entropy"):
            problems.invalid("spec.loss", f"classification trains with cross_entropy, got {loss!r}")
        loss = "cross_entropy"
    else:
        loss = loss or "mse"
        if loss not in REGRESSION_LOSSES:
            problems.invalid("spec.loss", f"for regression, {not_one_of(loss, REGRESSION_LOSSES)}")
    config["loss"] = loss

    data, facts = _check_data(raw.get("data") or {}, dataset, arch_spec, task, problems)
    config["data"] = data
    config["optimizer"] = _check_optimizer(raw.get("optimizer") or {}, problems)
    config["lr_schedule"] = _check_schedule(raw.get("lr_schedule") or {}, config["optimizer"]["lr"], problems)
    if "fine_tune" in config:
        _check_backbone_lr(
            config["fine_tune"]["backbone_lr_scale"], config["optimizer"], config["lr_schedule"], problems
        )

    epochs, max_steps = _check_length(raw, problems)
    config["epochs"] = epochs if epochs or max_steps else 1
    config["max_steps"] = max_steps
    config["batch_size"], config["log_every_n_steps"], max_restarts = _check_counts(raw, problems)
    config["seed"] = int(raw.get("seed", 0))

    # The metrics a job reports depend on its validation split: unknown without the dataset.
    metrics = epoch_metric_names(task, bool(data["val_split"])) if facts is not None else None
    config["early_stopping"] = _check_early_stopping(raw.get("early_stopping"), metrics, problems)
    config["checkpoints"] = _check_checkpoints(raw.get("checkpoints") or {}, metrics, problems)
    config["devices"] = _check_devices(raw.get("devices") or {}, devices, problems)
    config["precision"] = _check_precision(raw.get("precision") or "fp32", config["devices"], problems)
    if facts is not None and arch_spec is not None and batch_norm_values_per_sample(arch_spec) == 1:
        _check_batch_norm_batches(config, facts.splits.get(data["train_split"], 0), problems)
    if facts is not None:
        _check_warmup(config, facts.splits.get(data["train_split"], 0), problems)
    config["priority"] = int(raw.get("priority", 0))
    config["register_as"] = _check_register_as(raw.get("register_as") or {}, problems)
    config["tags"] = _check_tags(dict(raw.get("tags") or {}), config["register_as"], problems)
    # Only set, so that the configs (and run params) of jobs without them stay as they were.
    if max_restarts:
        config["max_restarts"] = max_restarts
    problems.raise_if_any()
    assert facts is not None  # a spec without its dataset has a problem, raised above
    config["dataset_sha256"] = facts.sha256
    return config


def check_spec_values(raw: dict[str, Any], root: str) -> None:
    """InvalidArgument naming each of `raw`'s values that no job takes, as normalize_spec checks
    them, for a spec kept as a record (a version's lineage.job_spec, the spec called `root`): its
    length, batch, logging, restarts, optimizer and schedule. What a spec names (its dataset,
    architecture, parent and devices) is another daemon's, so it goes unchecked."""
    problems = _Problems(root)
    optimizer = _check_optimizer(raw.get("optimizer") or {}, problems)
    _check_schedule(raw.get("lr_schedule") or {}, optimizer["lr"], problems)
    _check_length(raw, problems)
    _check_counts(raw, problems)
    problems.raise_if_any()


def _check_counts(raw: dict[str, Any], problems: _Problems) -> tuple[int, int, int]:
    """(batch_size, log_every_n_steps, max_restarts), defaults applied; max_restarts 0 when out of range."""
    batch_size = int(raw.get("batch_size", 32))
    if batch_size < 1:
        problems.invalid("spec.batch_size", f"must be >= 1, got {batch_size}")
    log_every = int(raw.get("log_every_n_steps", 10))
    if log_every < 1:
        problems.invalid("spec.log_every_n_steps", f"must be >= 1, got {log_every}")
    max_restarts = int(raw.get("max_restarts", 0))
    if not 0 <= max_restarts <= 100:
        problems.invalid("spec.max_restarts", f"must be in 0..100, got {max_restarts}")
        max_restarts = 0
    return batch_size, log_every, max_restarts


def _check_length(raw: dict[str, Any], problems: _Problems) -> tuple[int, int]:
    """(epochs, max_steps), 0 for no bound. One of them may be 0 when the other bounds the job;
    a 0 written out with nothing else set is a job of no length, not the default 1 epoch."""
    epochs, max_steps = int(raw.get("epochs", 0)), int(raw.get("max_steps", 0))
    if epochs < 0:
        problems.invalid("spec.epochs", f"must be >= 0, got {epochs}")
    elif epochs > MAX_EPOCHS:
        problems.invalid("spec.epochs", f"must be at most {MAX_EPOCHS}, got {epochs}")
    elif "epochs" in raw and epochs == 0 and max_steps == 0:
        problems.invalid(
            "spec.epochs", "must be >= 1, got 0 (0 only with max_steps set, to train by steps alone)"
        )
    if max_steps < 0:
        problems.invalid("spec.max_steps", f"must be >= 0, got {max_steps}")
    elif max_steps > MAX_STEPS:
        problems.invalid("spec.max_steps", f"must be at most {MAX_STEPS}, got {max_steps}")
    elif "max_steps" in raw and max_steps == 0 and epochs == 0 and "epochs" not in raw:
        problems.invalid("spec.max_steps", "must be >= 1, got 0 (0 only with epochs set, for no step limit)")
    return epochs, max_steps


def _check_architecture(raw: dict[str, Any], problems: _Problems) -> ArchitectureSpec | None:
    """The architecture's spec, or None (with its problems recorded)."""
    if not raw.get("family"):
        problems.invalid(
            "spec.architecture", f"set one architecture family ({', '.join(ARCHITECTURE_FAMILIES)})"
        )
        return None
    try:
        arch_spec = unchecked_spec_from_dict(raw)
    except InvalidArgument as exc:
        problems.add(InvalidArgument, f"spec.{exc.message}")
        return None
    found = spec_problems(arch_spec)
    for problem in found:
        problems.add(InvalidArgument, f"spec.{problem}")
    return None if found else arch_spec


def _check_module(
    arch_spec: PythonSpec, module_paths: tuple[Path, ...], problems: _Problems
) -> PythonSpec | None:
    """The spec with its module file's sha256, once the file is found under `module_paths`.
    Found, not imported: user code runs in the job's worker, which builds the model before its
    first step, so an import that fails or a class that refuses its kwargs fails the job with the
    error, while the daemon serving beside it never runs the module."""
    try:
        path = find_entry_file(arch_spec.entry, module_paths)
    except TesseraError as exc:
        problems.add(type(exc), f"spec.{exc.message}")
        return None
    return dataclasses.replace(arch_spec, module_sha256=file_sha256(path))


def _check_data(
    raw: dict[str, Any], dataset: Any, arch_spec: ArchitectureSpec | None, task: str, problems: _Problems
) -> tuple[dict[str, Any], DatasetFacts | None]:
    """The data section (None for its facts when the dataset is not there: nothing else about
    it can be checked then)."""
    ref = raw.get("dataset") or {}
    name = problems.name("spec.data.dataset.name", ref.get("name", ""))
    version = int(ref.get("version", 0))
    train_split = raw.get("train_split") or DEFAULT_TRAIN_SPLIT
    val_split = raw.get("val_split", "")
    input_array = raw.get("input_array") or "x"
    target_array = raw.get("target_array") or "y"
    data = {
        "dataset": name,
        "version": version,
        "train_split": train_split,
        "val_split": val_split,
        "input_array": input_array,
        "target_array": target_array,
    }
    if val_split == train_split:
        problems.invalid(
            "spec.data.train_split and spec.data.val_split",
            f"both name split {val_split!r}: validating on the training data measures nothing; name "
            "another split for val_split, or leave it empty to train without validation",
        )
    if version < 0:
        problems.invalid("spec.data.dataset.version", f"must be >= 0 (0 for the newest), got {version}")
    if not name or version < 0:
        return data, None
    try:
        facts: DatasetFacts = dataset(name, version)
    except TesseraError as exc:
        # NotFound for a dataset or version that does not exist, as for every reference to a
        # missing thing (init_from, a deployment's version).
        problems.add(type(exc), f"spec.data.dataset: {exc.message}")
        return data, None
    data["version"] = facts.version
    where = f"dataset {name!r} v{facts.version}"
    splits = ", ".join(sorted(facts.splits)) or "no splits"
    if train_split not in facts.splits:
        problems.unmet("spec.data.train_split", f"{where} has no split {train_split!r}; it has {splits}")
    elif facts.splits[train_split] == 0:
        problems.unmet("spec.data.train_split", f"split {train_split!r} of {where} is empty")
    # An empty validation split gives no validation metrics, which early stopping and
    # keep_best_metric would then look for in vain.
    if val_split and val_split != train_split:  # the same split is refused above
        if val_split not in facts.splits:
            problems.unmet("spec.data.val_split", f"{where} has no split {val_split!r}; it has {splits}")
        elif facts.splits[val_split] == 0:
            problems.unmet("spec.data.val_split", f"split {val_split!r} of {where} is empty")
    # The default validation split, unless the job trains on it.
    if not val_split and facts.splits.get("val") and train_split != "val":
        data["val_split"] = "val"
    arrays = ", ".join(sorted(facts.arrays))
    # One array alone: most often a .npy pushed by itself, its inputs' or targets' file apart.
    together = (
        "; a job reads its inputs and targets from one version: push both in one, an .npz "
        "(np.savez('d.npz', x=..., y=...)) or several .npy files in one push"
        if len(facts.arrays) == 1
        else ""
    )
    for field_name, array in (("input_array", input_array), ("target_array", target_array)):
        if array not in facts.arrays:
            problems.unmet(
                f"spec.data.{field_name}", f"{where} has no array {array!r}; it has {arrays}{together}"
            )
    if input_array in facts.arrays:
        in_dtype, in_shape = facts.arrays[input_array]
        if arch_spec is not None and tuple(in_shape[1:]) != tuple(arch_spec.input_shape):
            problems.unmet(
                "spec.architecture.input_shape",
                f"the model takes samples shaped {list(arch_spec.input_shape)} but array {input_array!r} "
                f"of {where} holds samples shaped {list(in_shape[1:])}"
                + _input_shape_advice(arch_spec, tuple(in_shape[1:])),
            )
        if in_dtype == "bool" or not (in_dtype in INTEGER_DTYPES or in_dtype.startswith(("float", "bfloat"))):
            problems.unmet(
                "spec.data.input_array", f"array {input_array!r} has dtype {in_dtype}; need numbers"
            )
    if target_array in facts.arrays:
        _check_targets(facts, input_array, target_array, arch_spec, task, problems)
    return data, facts


def _input_shape_advice(arch_spec: ArchitectureSpec, sample: tuple[int, ...]) -> str:
    """What makes the model take the dataset's samples: an input_shape the family takes, or (the
    samples being unfit for it) the axis or shape the array needs."""
    family = family_of(arch_spec)
    rank, layout = sample_layout(arch_spec)
    if advice := _channels_last_advice(tuple(arch_spec.input_shape), sample, rank, layout):
        return advice
    if rank is None or len(sample) == rank:
        return f"; set input_shape to {list(sample)}"
    channeled = [1, *sample]
    if advice := channel_axis_advice(rank, layout, sample):
        shape = "" if channeled == list(arch_spec.input_shape) else f" and set input_shape to {channeled}"
        return (
            f", without the channel axis a {family} takes {layout}: add one, {advice}, push it again{shape}"
        )
    return f"; a {family} takes samples of {rank} dims {layout}: push the array shaped (N, {layout[1:]}"


def _channels_last_advice(
    declared: tuple[int, ...], sample: tuple[int, ...], rank: int | None, layout: str
) -> str:
    """For samples that are the declared shape with its channel axis moved last (or, for a family
    of any layout, first), the axis move that fixes the data: setting input_shape to the moved
    shape would train on the wrong axes. "" when the samples are no such move."""
    if len(declared) < 3 or len(sample) != len(declared):
        return ""
    if sample == (*declared[1:], declared[0]) and (rank is None or layout.startswith("(C, ")):
        return (
            "; the data looks channels-last: move its channel axis first before pushing it again, "
            "np.moveaxis(x, -1, 1) (keep input_shape)"
        )
    if rank is None and sample == (declared[-1], *declared[:-1]):
        return (
            "; the data looks channels-first: move its channel axis last before pushing it again, "
            "np.moveaxis(x, 1, -1) (keep input_shape)"
        )
    return ""


def _check_targets(
    facts: DatasetFacts,
    input_array: str,
    target_array: str,
    arch_spec: ArchitectureSpec | None,
    task: str,
    problems: _Problems,
) -> None:
    t_dtype, t_shape = facts.arrays[target_array]
    if input_array in facts.arrays:
        in_shape = facts.arrays[input_array][1]
        if t_shape[:1] != in_shape[:1]:
            problems.unmet(
                "spec.data.target_array",
                f"array {target_array!r} has {t_shape[0] if t_shape else 0} samples but {input_array!r} has "
                f"{in_shape[0]}",
            )
    if task == "classification":
        if t_dtype not in INTEGER_DTYPES or len(t_shape) != 1:
            problems.unmet(
                "spec.data.target_array",
                f"classification needs integer class ids shaped (N,), but {target_array!r} is {t_dtype} shaped "
                f"{list(t_shape)}; use task REGRESSION for float targets"
                + (
                    f", or cast them: {target_array}.astype(np.int64), as every value is whole"
                    if len(t_shape) == 1 and t_dtype.startswith("float") and facts.whole(target_array)
                    else ""
                ),
            )
        elif arch_spec is not None and target_array in facts.ranges:
            _check_class_ids(facts.ranges[target_array], target_array, arch_spec.output_size, problems)
    elif arch_spec is not None:
        out = arch_spec.output_size
        if not (tuple(t_shape[1:]) == (out,) or (out == 1 and len(t_shape) == 1)):
            problems.unmet(
                "spec.data.target_array",
                f"regression with output_size {out} needs targets shaped (N, {out})"
                f"{' or (N,)' if out == 1 else ''}, but {target_array!r} is shaped {list(t_shape)}",
            )


def _check_class_ids(
    id_range: tuple[float, float], target_array: str, output_size: int, problems: _Problems
) -> None:
    """Every class id must name one of the model's outputs: cross_entropy fails on one that does not."""
    low, high = int(id_range[0]), int(id_range[1])
    if low < 0:
        problems.unmet(
            "spec.data.target_array",
            f"class ids must be >= 0, but {target_array!r} holds {low}; number the classes from 0",
        )
    elif high >= output_size:
        problems.unmet(
            "spec.architecture.output_size",
            f"is {output_size}, but {target_array!r} holds class id {high}; set output_size to at least "
            f"{high + 1}, one output per class",
        )


def epoch_step_count(train_count: int, batch: int, world: int) -> int:
    """As the training loop counts them: each of `world` processes takes its share of the split."""
    return math.ceil(math.ceil(train_count / world) / batch)


def _check_warmup(config: dict[str, Any], train_count: int, problems: _Problems) -> None:
    """A warm-up longer than the job would end with the rate still short of optimizer.lr."""
    warmup = config["lr_schedule"]["warmup_steps"]
    batch, world = config["batch_size"], config["devices"]["count"]
    epochs, max_steps = config["epochs"], config["max_steps"]
    if warmup < 1 or min(batch, world, train_count) < 1 or min(epochs, max_steps) < 0:
        return  # refused already, or nothing to warm
    steps_per_epoch = epoch_step_count(train_count, batch, world)
    total = min(s for s in (epochs * steps_per_epoch if epochs else None, max_steps or None) if s is not None)
    if warmup > total:
        problems.invalid(
            "spec.lr_schedule.warmup_steps",
            f"is {warmup}, but the job trains {total} steps ({steps_per_epoch} per epoch); the learning "
            f"rate would never reach optimizer.lr: set warmup_steps to at most {total}, or train longer",
        )


def _check_batch_norm_batches(config: dict[str, Any], train_count: int, problems: _Problems) -> None:
    """For a model whose batch norm sees one value per channel of a sample, which cannot train on a
    batch of one (torch raises "Expected more than 1 value per channel when training"): neither
    batch_size 1 nor a last batch of one in an epoch's steps."""
    batch, world = config["batch_size"], config["devices"]["count"]
    family = config["architecture"]["family"]
    other_norm = "layer" if family == "mlp" else "none"
    if batch < 1 or world < 1:  # refused already
        return
    per_rank = math.ceil(train_count / world)
    steps_per_epoch = epoch_step_count(train_count, batch, world)
    last = per_rank - batch * (steps_per_epoch - 1)
    reaches_last = not config["max_steps"] or config["max_steps"] >= steps_per_epoch
    if batch == 1:
        problems.unmet(
            "spec.batch_size",
            f"architecture.{family}.norm 'batch' cannot train on batches of 1 sample; set batch_size >= 2, "
            f"or norm '{other_norm}'",
        )
    elif last == 1 and reaches_last:
        samples = f"{per_rank} training samples" + (f" per process ({world})" if world > 1 else "")
        problems.unmet(
            "spec.batch_size",
            f"architecture.{family}.norm 'batch' cannot train on a batch of 1 sample, and {samples} in "
            f"batches of {batch} leave one over; pick a batch_size that leaves none or at least 2, or "
            f"norm '{other_norm}'",
        )


def _check_optimizer(raw: dict[str, Any], problems: _Problems) -> dict[str, Any]:
    name = raw.get("name") or "adam"
    if name not in OPTIMIZERS:
        problems.invalid("spec.optimizer.name", not_one_of(name, OPTIMIZERS))
    lr = float(raw.get("lr", 1e-3))
    if not math.isfinite(lr) or lr <= 0:
        problems.invalid("spec.optimizer.lr", f"must be > 0, got {lr}")
    elif lr > MAX_LR:
        problems.invalid("spec.optimizer.lr", _too_high(lr))
    config: dict[str, Any] = {
        "name": name,
        "lr": lr,
        "weight_decay": float(raw.get("weight_decay", 0.0)),
        "momentum": float(raw.get("momentum", 0.0)),
        "nesterov": bool(raw.get("nesterov", False)),
        "beta1": float(raw.get("beta1", 0.9)),
        "beta2": float(raw.get("beta2", 0.999)),
        "eps": float(raw.get("eps", 1e-8)),
        "grad_clip_norm": float(raw.get("grad_clip_norm", 0.0)),
    }
    for field_name in ("weight_decay", "momentum", "grad_clip_norm"):
        problems.nonneg(f"spec.optimizer.{field_name}", config[field_name])
    # adam and adamw divide by sqrt(v) + eps: 0 divides by zero where a gradient stays 0.
    if not math.isfinite(config["eps"]) or config["eps"] <= 0:
        problems.invalid("spec.optimizer.eps", f"must be > 0, got {config['eps']} (default 1e-8)")
    if name != "sgd" and (config["momentum"] or config["nesterov"]):
        problems.invalid("spec.optimizer.momentum", f"momentum and nesterov apply to sgd only, not {name}")
    elif config["nesterov"] and not config["momentum"]:
        problems.invalid("spec.optimizer.nesterov", "nesterov needs momentum > 0")
    if config["momentum"] >= 1:
        problems.invalid("spec.optimizer.momentum", f"must be in [0, 1), got {config['momentum']}")
    for field_name in ("beta1", "beta2"):
        if not 0 <= config[field_name] < 1:
            problems.invalid(f"spec.optimizer.{field_name}", f"must be in [0, 1), got {config[field_name]}")
    return config


def _too_high(lr: float) -> str:
    return (
        f"must be at most {MAX_LR:g}, got {lr:g}; a learning rate this high diverges (typical: 1e-4 to 1e-1)"
    )


def _check_schedule(raw: dict[str, Any], lr: float, problems: _Problems) -> dict[str, Any]:
    warmup = int(raw.get("warmup_steps", 0))
    if warmup < 0:
        problems.invalid("spec.lr_schedule.warmup_steps", f"must be >= 0, got {warmup}")
    schedule: dict[str, Any] = {"kind": "constant", "warmup_steps": warmup}
    if "step" in raw:
        step_size = int(raw["step"].get("step_size", 0))
        if step_size < 1:
            problems.invalid("spec.lr_schedule.step.step_size", f"must be >= 1 (epochs), got {step_size}")
        gamma = float(raw["step"].get("gamma", 0.1))
        if not 0 < gamma <= 1:
            problems.invalid("spec.lr_schedule.step.gamma", f"must be in (0, 1], got {gamma}")
        schedule.update(kind="step", step_size=step_size, gamma=gamma)
    elif "cosine" in raw:
        min_lr = float(raw["cosine"].get("min_lr", 0.0))
        if not 0 <= min_lr < lr:
            problems.invalid(
                "spec.lr_schedule.cosine.min_lr", f"must be in [0, optimizer.lr={lr}), got {min_lr}"
            )
        schedule.update(kind="cosine", min_lr=min_lr)
    elif "one_cycle" in raw:
        max_lr = float(raw["one_cycle"].get("max_lr", lr))
        pct = float(raw["one_cycle"].get("pct_start", 0.3))
        if not math.isfinite(max_lr) or max_lr <= 0:
            problems.invalid("spec.lr_schedule.one_cycle.max_lr", f"must be > 0, got {max_lr}")
        elif max_lr > MAX_LR:
            problems.invalid("spec.lr_schedule.one_cycle.max_lr", _too_high(max_lr))
        if not 0 < pct < 1:
            problems.invalid("spec.lr_schedule.one_cycle.pct_start", f"must be in (0, 1), got {pct}")
        schedule.update(kind="one_cycle", max_lr=max_lr, pct_start=pct)
    return schedule


def _check_backbone_lr(
    scale: float, optimizer: dict[str, Any], schedule: dict[str, Any], problems: _Problems
) -> None:
    """The backbone learns at the schedule's highest rate times backbone_lr_scale: that rate is held
    to MAX_LR as optimizer.lr is."""
    one_cycle = schedule["kind"] == "one_cycle"
    peak = schedule["max_lr"] if one_cycle else optimizer["lr"]
    if not (0 < peak <= MAX_LR and 0 < scale < math.inf):
        return  # refused already
    if peak * scale > MAX_LR:
        source = "lr_schedule.one_cycle.max_lr" if one_cycle else "optimizer.lr"
        problems.invalid(
            f"spec.{source} and spec.backbone_lr_scale",
            f"the backbone would learn at {source} {peak:g} x backbone_lr_scale {scale:g} = "
            f"{peak * scale:g}, above {MAX_LR:g}, which diverges; set backbone_lr_scale to at most "
            f"{_three_digits_down(MAX_LR / peak):g}",
        )


def _three_digits_down(value: float) -> float:
    """`value` to 3 significant digits, rounded down: a bound to quote that is itself within it."""
    unit = 10.0 ** (math.floor(math.log10(value)) - 2)
    return math.floor(value / unit) * unit


def _check_early_stopping(
    given: dict[str, Any] | None, metrics: list[str] | None, problems: _Problems
) -> dict[str, Any]:
    """Early stopping is on when the spec has the section. Its patience counts the epochs in a
    row without an improvement that stop the job, so 1 stops at the first one, as patience 0 does
    in Keras and Lightning (their count includes the epoch that stops): 0 here would be a section
    that does nothing, which its writer cannot have meant. In the config, patience 0 is off."""
    raw = given or {}
    patience = int(raw.get("patience", 0))
    if given is not None and patience < 1:
        problems.invalid(
            "spec.early_stopping.patience",
            f"must be >= 1, got {patience}; 1 stops at the first epoch without an improvement (what "
            "patience 0 does in Keras and Lightning), or leave early_stopping out to train every epoch",
        )
    metric = raw.get("metric") or ("val_loss" if metrics is None or "val_loss" in metrics else "train_loss")
    if given is not None and metrics is not None and metric not in metrics:
        problems.unmet(
            "spec.early_stopping.metric",
            f"this job reports {', '.join(metrics)} each epoch, not {metric!r}"
            + ("; validation metrics need a val_split" if metric.startswith("val_") else ""),
        )
    min_delta = float(raw.get("min_delta", 0.0))
    problems.nonneg("spec.early_stopping.min_delta", min_delta)
    return {
        "metric": metric,
        "mode": _mode(raw.get("mode", ""), metric),
        "patience": patience,
        "min_delta": min_delta,
    }


def _check_checkpoints(raw: dict[str, Any], metrics: list[str] | None, problems: _Problems) -> dict[str, Any]:
    every = int(raw.get("every_n_epochs", 1))
    keep_last = int(raw.get("keep_last", 2))
    if every < 1:
        problems.invalid("spec.checkpoints.every_n_epochs", f"must be >= 1, got {every}")
    if keep_last < 1:
        problems.invalid("spec.checkpoints.keep_last", f"must be >= 1, got {keep_last}")
    best = raw.get("keep_best_metric", "")
    if best and metrics is not None and best not in metrics:
        problems.unmet(
            "spec.checkpoints.keep_best_metric",
            f"this job reports {', '.join(metrics)} each epoch, not {best!r}",
        )
    if not best:
        # Without a metric nothing ranks the checkpoints: these would be stored and do nothing.
        choose = f"set keep_best_metric to one of {', '.join(metrics)}" if metrics else "set keep_best_metric"
        if int(raw.get("retain_best", 0)) > 0:
            problems.invalid(
                "spec.checkpoints.retain_best",
                f"keeps the best checkpoints by keep_best_metric; {choose}, or retain_best 0",
            )
        if raw.get("keep_best_mode"):
            problems.invalid(
                "spec.checkpoints.keep_best_mode",
                f"applies with keep_best_metric; {choose}, or leave keep_best_mode unset",
            )
    checked = {
        "every_n_epochs": every,
        "keep_last": keep_last,
        "keep_best_metric": best,
        "keep_best_mode": _mode(raw.get("keep_best_mode", ""), best) if best else "",
    }
    # Only set when asked, so that the configs of jobs without them stay as they were; unset, the
    # daemon's training.checkpoints_keep_* apply when the job ends.
    for name in ("retain_latest", "retain_best"):
        if name in raw:
            count = int(raw[name])
            if count < 0:
                problems.invalid(f"spec.checkpoints.{name}", f"must be >= 0, got {count}")
            checked[name] = count
    return checked


def _check_devices(raw: dict[str, Any], devices: DeviceFacts, problems: _Problems) -> dict[str, Any]:
    checked = _check_device_kind(raw, devices, problems)
    # Only set, so that the configs of jobs without them stay as they were.
    if ray_resources := _check_ray_resources(raw.get("ray_resources") or {}, problems):
        checked["ray_resources"] = ray_resources
    return checked


def _check_device_kind(raw: dict[str, Any], devices: DeviceFacts, problems: _Problems) -> dict[str, Any]:
    processes = int(raw.get("cpu_processes", 1))
    if processes < 1:
        problems.invalid("spec.devices.cpu_processes", f"must be >= 1, got {processes}")
    if "cuda" in raw or "gpu_count" in raw:
        if "cpu_processes" in raw:
            problems.invalid("spec.devices.cpu_processes", "applies to cpu jobs only")
        if "cuda" in raw:
            indices = [int(i) for i in raw["cuda"].get("indices", [])]
            if not indices:
                problems.invalid("spec.devices.cuda.indices", "list at least one GPU index, e.g. [0]")
            elif len(set(indices)) != len(indices):
                problems.invalid("spec.devices.cuda.indices", f"{indices} lists a GPU twice")
            have = ", ".join(f"cuda:{i}" for i in range(devices.gpu_count)) or "no CUDA GPUs"
            for index in indices:
                if not 0 <= index < devices.gpu_count:
                    problems.unmet(
                        "spec.devices.cuda.indices", f"cuda:{index} does not exist; this host has {have}"
                    )
            return {"kind": "cuda", "indices": indices, "count": len(indices)}
        count = int(raw["gpu_count"])
        if count < 1:
            problems.invalid("spec.devices.gpu_count", f"must be >= 1, got {count}")
        elif count > devices.gpu_count:
            problems.unmet(
                "spec.devices.gpu_count",
                f"the job asks for {count} GPUs but this host has {devices.gpu_count}",
            )
        return {"kind": "cuda", "indices": [], "count": count}
    count = max(processes, 1)
    if count > devices.cpu_slots:
        problems.unmet(
            "spec.devices",
            f"the job asks for {count} CPU process{'es' if count > 1 else ''} but the daemon has "
            f"{devices.cpu_slots} CPU slot{'s' if devices.cpu_slots != 1 else ''} (training.cpu_slots)",
        )
    return {"kind": "cpu", "indices": [], "count": count}


def _check_ray_resources(raw: dict[str, Any], problems: _Problems) -> dict[str, float]:
    """Custom Ray resources (training.ray_backend checks them against the cluster)."""
    out: dict[str, float] = {}
    for name, amount in raw.items():
        if not name or not math.isfinite(amount) or amount <= 0:
            problems.invalid(
                "spec.devices.ray_resources", f"{name!r}: {amount} must be a resource name and an amount > 0"
            )
        else:
            out[str(name)] = float(amount)
    return out


def _check_precision(precision: str, devices: dict[str, Any], problems: _Problems) -> str:
    if precision not in PRECISIONS:
        problems.invalid("spec.precision", not_one_of(precision, PRECISIONS))
    elif precision == "fp16" and devices["kind"] != "cuda":
        # CPU float16 kernels are slow or missing and a loss scaler buys nothing there.
        problems.invalid("spec.precision", "fp16 trains on CUDA devices only; use bf16 on CPU")
    return precision


PARENT_TAG = "mlflow.parentRunId"
"""The tag MLflow names a run's parent with: a run's parent_run_id, shown as a tag."""


def _check_tags(
    tags: dict[str, str], register_as: dict[str, str] | None, problems: _Problems
) -> dict[str, str]:
    """The job's tags become its run's tags and its version's: refused here, before the training,
    not at registration after it."""
    for problem in entry_problems("spec.tags", tags):
        problems.add(InvalidArgument, problem)
    if PARENT_TAG in tags:
        # It and parent_run_id always agree, and a job's run has no parent.
        problems.invalid(
            f"spec.tags[{PARENT_TAG!r}]",
            "names a run's parent, which a job's run does not have; leave it out",
        )
    if register_as is not None:
        problem = record_text_problem("a model version", register_as["description"], tags)
        if problem:
            problems.invalid("spec.register_as.description and spec.tags", problem)
    return tags


def _check_register_as(raw: dict[str, Any], problems: _Problems) -> dict[str, str] | None:
    model = raw.get("model", "")
    alias = raw.get("alias", "")
    if not model:
        if alias:
            problems.invalid("spec.register_as.model", "set the model to register to when giving an alias")
        return None
    problems.name("spec.register_as.model", model)
    if alias:
        problems.name("spec.register_as.alias", alias)
        if alias in RESERVED_ALIASES:
            problems.invalid(
                "spec.register_as.alias", f"{alias!r} is reserved and always names the newest version"
            )
        elif version_like_alias(alias):
            problems.invalid("spec.register_as.alias", f"{alias!r} {version_like_alias(alias)}")
    return {"model": model, "alias": alias, "description": raw.get("description", "")}

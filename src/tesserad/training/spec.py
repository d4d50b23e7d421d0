"""A job spec checked and completed at submit time, so a bad spec never becomes a job that fails later.

The API layer turns the JobSpec message into a plain dict with the proto's zero values left in
(enums as lowercase names, "" when unspecified) and the architecture as the nn package's dict
form; `normalize_spec` applies the documented defaults and checks everything that can be
checked before running: the architecture, the dataset's version, splits and arrays, the
model's input shape against the data, and the devices. Errors name the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tesserad.dtypes import INTEGER_DTYPES
from tesserad.errors import FailedPrecondition, InvalidArgument, NotFound, TesseraError
from tesserad.names import RESERVED_ALIASES, validate_name
from tesserad.nn import spec_from_dict

OPTIMIZERS = ("sgd", "adam", "adamw")
REGRESSION_LOSSES = ("mse", "l1", "huber")
FAMILIES = ("mlp", "cnn2d", "cnn4d", "lstm", "transformer")


@dataclass(frozen=True)
class DatasetFacts:
    """What submit-time checks need to know about one dataset version."""

    name: str
    version: int
    sha256: str
    arrays: dict[str, tuple[str, tuple[int, ...]]]  # name -> (numpy dtype name, shape)
    splits: dict[str, int]  # name -> sample count


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


def _mode(mode: str, metric: str) -> str:
    if mode:
        return mode
    lowered = metric.lower()
    return "min" if "loss" in lowered or "error" in lowered else "max"


def _nonneg(value: float, field: str) -> None:
    if not math.isfinite(value) or value < 0:
        raise InvalidArgument(f"{field} must be a finite number >= 0, got {value}")


def normalize_spec(raw: dict[str, Any], dataset: Any, devices: DeviceFacts) -> dict[str, Any]:
    """The complete job config, or InvalidArgument / FailedPrecondition naming the field.

    `dataset(name, version)` returns DatasetFacts or raises NotFound.
    """
    config: dict[str, Any] = {}
    config["experiment"] = validate_name("spec.experiment", raw.get("experiment") or "default")
    if raw.get("run_name"):
        validate_name("spec.run_name", raw["run_name"])
    config["run_name"] = raw.get("run_name", "")

    arch = raw.get("architecture")
    if not arch or not arch.get("family"):
        raise InvalidArgument(f"spec.architecture: set one architecture family ({', '.join(FAMILIES)})")
    try:
        arch_spec = spec_from_dict(arch)
    except InvalidArgument as exc:
        raise InvalidArgument(f"spec.{exc.message}") from None
    config["architecture"] = arch

    task = raw.get("task") or "classification"
    config["task"] = task
    loss = raw.get("loss", "")
    if task == "classification":
        if loss not in ("", "cross_entropy"):
            raise InvalidArgument(f"spec.loss: classification trains with cross_entropy, got {loss!r}")
        loss = "cross_entropy"
    else:
        loss = loss or "mse"
        if loss not in REGRESSION_LOSSES:
            raise InvalidArgument(
                f"spec.loss: regression takes one of {', '.join(REGRESSION_LOSSES)}, got {loss!r}"
            )
    config["loss"] = loss

    config["data"], facts = _check_data(raw.get("data") or {}, dataset, arch_spec, task)
    config["optimizer"] = _check_optimizer(raw.get("optimizer") or {})
    config["lr_schedule"] = _check_schedule(raw.get("lr_schedule") or {}, config["optimizer"]["lr"])

    epochs, max_steps = int(raw.get("epochs", 0)), int(raw.get("max_steps", 0))
    if epochs < 0:
        raise InvalidArgument(f"spec.epochs must be >= 0, got {epochs}")
    if max_steps < 0:
        raise InvalidArgument(f"spec.max_steps must be >= 0, got {max_steps}")
    config["epochs"] = epochs if epochs or max_steps else 1
    config["max_steps"] = max_steps
    batch_size = int(raw.get("batch_size", 0)) or 32
    if batch_size < 1:
        raise InvalidArgument(f"spec.batch_size must be >= 1, got {batch_size}")
    config["batch_size"] = batch_size
    config["seed"] = int(raw.get("seed", 0))
    log_every = int(raw.get("log_every_n_steps", 0)) or 10
    if log_every < 1:
        raise InvalidArgument(f"spec.log_every_n_steps must be >= 1, got {log_every}")
    config["log_every_n_steps"] = log_every

    metrics = epoch_metric_names(task, bool(config["data"]["val_split"]))
    config["early_stopping"] = _check_early_stopping(raw.get("early_stopping") or {}, metrics)
    config["checkpoints"] = _check_checkpoints(raw.get("checkpoints") or {}, metrics)
    config["devices"] = _check_devices(raw.get("devices") or {}, devices)
    config["priority"] = int(raw.get("priority", 0))
    config["register_as"] = _check_register_as(raw.get("register_as") or {})
    config["tags"] = dict(raw.get("tags") or {})
    config["dataset_sha256"] = facts.sha256
    return config


def _check_data(
    raw: dict[str, Any], dataset: Any, arch_spec: Any, task: str
) -> tuple[dict[str, Any], DatasetFacts]:
    ref = raw.get("dataset") or {}
    name = ref.get("name", "")
    validate_name("spec.data.dataset.name", name)
    version = int(ref.get("version", 0))
    if version < 0:
        raise InvalidArgument(f"spec.data.dataset.version must be >= 0 (0 for the newest), got {version}")
    try:
        facts: DatasetFacts = dataset(name, version)
    except NotFound as exc:
        # A missing dataset is a precondition of this job, not a resource the call names.
        raise FailedPrecondition(f"spec.data.dataset: {exc.message}; upload it first") from None
    except TesseraError as exc:
        raise type(exc)(f"spec.data.dataset: {exc.message}") from None
    where = f"dataset {name!r} v{facts.version}"
    train_split = raw.get("train_split") or "train"
    if train_split not in facts.splits:
        raise FailedPrecondition(
            f"spec.data.train_split: {where} has no split {train_split!r}; it has "
            f"{', '.join(sorted(facts.splits)) or 'no splits'}"
        )
    val_split = raw.get("val_split", "")
    if val_split and val_split not in facts.splits:
        raise FailedPrecondition(
            f"spec.data.val_split: {where} has no split {val_split!r}; it has {', '.join(sorted(facts.splits))}"
        )
    if not val_split and "val" in facts.splits:
        val_split = "val"
    if facts.splits[train_split] == 0:
        raise FailedPrecondition(f"spec.data.train_split: split {train_split!r} of {where} is empty")
    arrays = ", ".join(sorted(facts.arrays))
    input_array = raw.get("input_array") or "x"
    target_array = raw.get("target_array") or "y"
    for field, array in (("input_array", input_array), ("target_array", target_array)):
        if array not in facts.arrays:
            raise FailedPrecondition(f"spec.data.{field}: {where} has no array {array!r}; it has {arrays}")
    in_dtype, in_shape = facts.arrays[input_array]
    want = tuple(arch_spec.input_shape)
    if tuple(in_shape[1:]) != want:
        raise FailedPrecondition(
            f"spec.architecture.input_shape: the model takes samples shaped {list(want)} but array "
            f"{input_array!r} of {where} holds samples shaped {list(in_shape[1:])}; set input_shape to "
            f"{list(in_shape[1:])}"
        )
    if in_dtype == "bool" or not (in_dtype in INTEGER_DTYPES or in_dtype.startswith(("float", "bfloat"))):
        raise FailedPrecondition(
            f"spec.data.input_array: array {input_array!r} has dtype {in_dtype}; need numbers"
        )
    t_dtype, t_shape = facts.arrays[target_array]
    if t_shape[:1] != in_shape[:1]:
        raise FailedPrecondition(
            f"spec.data.target_array: array {target_array!r} has {t_shape[0] if t_shape else 0} samples but "
            f"{input_array!r} has {in_shape[0]}"
        )
    out = arch_spec.output_size
    if task == "classification":
        if t_dtype not in INTEGER_DTYPES or len(t_shape) != 1:
            raise FailedPrecondition(
                f"spec.data.target_array: classification needs integer class ids shaped (N,), but "
                f"{target_array!r} is {t_dtype} shaped {list(t_shape)}; use task REGRESSION for float targets"
            )
    else:
        fits = tuple(t_shape[1:]) == (out,) or (out == 1 and len(t_shape) == 1)
        if not fits:
            raise FailedPrecondition(
                f"spec.data.target_array: regression with output_size {out} needs targets shaped "
                f"(N, {out}){' or (N,)' if out == 1 else ''}, but {target_array!r} is shaped {list(t_shape)}"
            )
    data = {
        "dataset": name,
        "version": facts.version,
        "train_split": train_split,
        "val_split": val_split,
        "input_array": input_array,
        "target_array": target_array,
    }
    return data, facts


def _check_optimizer(raw: dict[str, Any]) -> dict[str, Any]:
    name = raw.get("name") or "adam"
    if name not in OPTIMIZERS:
        raise InvalidArgument(f"spec.optimizer.name: must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    lr = float(raw.get("lr", 0.0)) or 1e-3
    if not math.isfinite(lr) or lr <= 0:
        raise InvalidArgument(f"spec.optimizer.lr must be > 0, got {lr}")
    config = {
        "name": name,
        "lr": lr,
        "weight_decay": float(raw.get("weight_decay", 0.0)),
        "momentum": float(raw.get("momentum", 0.0)),
        "nesterov": bool(raw.get("nesterov", False)),
        "beta1": float(raw.get("beta1", 0.0)) or 0.9,
        "beta2": float(raw.get("beta2", 0.0)) or 0.999,
        "eps": float(raw.get("eps", 0.0)) or 1e-8,
        "grad_clip_norm": float(raw.get("grad_clip_norm", 0.0)),
    }
    for field in ("weight_decay", "momentum", "grad_clip_norm", "eps"):
        _nonneg(config[field], f"spec.optimizer.{field}")
    if name != "sgd" and (config["momentum"] or config["nesterov"]):
        raise InvalidArgument(f"spec.optimizer.momentum: momentum and nesterov apply to sgd only, not {name}")
    if config["nesterov"] and not config["momentum"]:
        raise InvalidArgument("spec.optimizer.nesterov: nesterov needs momentum > 0")
    if config["momentum"] >= 1:
        raise InvalidArgument(f"spec.optimizer.momentum must be in [0, 1), got {config['momentum']}")
    for field in ("beta1", "beta2"):
        if not 0 <= config[field] < 1:
            raise InvalidArgument(f"spec.optimizer.{field} must be in [0, 1), got {config[field]}")
    return config


def _check_schedule(raw: dict[str, Any], lr: float) -> dict[str, Any]:
    warmup = int(raw.get("warmup_steps", 0))
    if warmup < 0:
        raise InvalidArgument(f"spec.lr_schedule.warmup_steps must be >= 0, got {warmup}")
    schedule: dict[str, Any] = {"kind": "constant", "warmup_steps": warmup}
    if "step" in raw:
        step_size = int(raw["step"].get("step_size", 0))
        if step_size < 1:
            raise InvalidArgument(f"spec.lr_schedule.step.step_size must be >= 1 (epochs), got {step_size}")
        gamma = float(raw["step"].get("gamma", 0.0)) or 0.1
        if not 0 < gamma <= 1:
            raise InvalidArgument(f"spec.lr_schedule.step.gamma must be in (0, 1], got {gamma}")
        schedule.update(kind="step", step_size=step_size, gamma=gamma)
    elif "cosine" in raw:
        min_lr = float(raw["cosine"].get("min_lr", 0.0))
        if not 0 <= min_lr < lr:
            raise InvalidArgument(
                f"spec.lr_schedule.cosine.min_lr must be in [0, optimizer.lr={lr}), got {min_lr}"
            )
        schedule.update(kind="cosine", min_lr=min_lr)
    elif "one_cycle" in raw:
        max_lr = float(raw["one_cycle"].get("max_lr", 0.0)) or lr
        pct = float(raw["one_cycle"].get("pct_start", 0.0)) or 0.3
        if not math.isfinite(max_lr) or max_lr <= 0:
            raise InvalidArgument(f"spec.lr_schedule.one_cycle.max_lr must be > 0, got {max_lr}")
        if not 0 < pct < 1:
            raise InvalidArgument(f"spec.lr_schedule.one_cycle.pct_start must be in (0, 1), got {pct}")
        schedule.update(kind="one_cycle", max_lr=max_lr, pct_start=pct)
    return schedule


def _check_early_stopping(raw: dict[str, Any], metrics: list[str]) -> dict[str, Any]:
    patience = int(raw.get("patience", 0))
    if patience < 0:
        raise InvalidArgument(f"spec.early_stopping.patience must be >= 0 (0 disables), got {patience}")
    metric = raw.get("metric") or ("val_loss" if "val_loss" in metrics else "train_loss")
    if patience and metric not in metrics:
        raise FailedPrecondition(
            f"spec.early_stopping.metric: this job reports {', '.join(metrics)} each epoch, not {metric!r}"
            + ("; validation metrics need a val_split" if metric.startswith("val_") else "")
        )
    min_delta = float(raw.get("min_delta", 0.0))
    _nonneg(min_delta, "spec.early_stopping.min_delta")
    return {
        "metric": metric,
        "mode": _mode(raw.get("mode", ""), metric),
        "patience": patience,
        "min_delta": min_delta,
    }


def _check_checkpoints(raw: dict[str, Any], metrics: list[str]) -> dict[str, Any]:
    every = int(raw.get("every_n_epochs", 0)) or 1
    keep_last = int(raw.get("keep_last", 0)) or 2
    if every < 1:
        raise InvalidArgument(f"spec.checkpoints.every_n_epochs must be >= 1, got {every}")
    if keep_last < 1:
        raise InvalidArgument(f"spec.checkpoints.keep_last must be >= 1, got {keep_last}")
    best = raw.get("keep_best_metric", "")
    if best and best not in metrics:
        raise FailedPrecondition(
            f"spec.checkpoints.keep_best_metric: this job reports {', '.join(metrics)} each epoch, not {best!r}"
        )
    return {
        "every_n_epochs": every,
        "keep_last": keep_last,
        "keep_best_metric": best,
        "keep_best_mode": _mode(raw.get("keep_best_mode", ""), best) if best else "",
    }


def _check_devices(raw: dict[str, Any], devices: DeviceFacts) -> dict[str, Any]:
    processes = int(raw.get("cpu_processes", 0))
    if processes < 0:
        raise InvalidArgument(f"spec.devices.cpu_processes must be >= 0, got {processes}")
    if "cuda" in raw or "gpu_count" in raw:
        if processes:
            raise InvalidArgument("spec.devices.cpu_processes applies to cpu jobs only")
        if "cuda" in raw:
            indices = [int(i) for i in raw["cuda"].get("indices", [])]
            if not indices:
                raise InvalidArgument("spec.devices.cuda.indices: list at least one GPU index, e.g. [0]")
            if len(set(indices)) != len(indices):
                raise InvalidArgument(f"spec.devices.cuda.indices: {indices} lists a GPU twice")
            for index in indices:
                if not 0 <= index < devices.gpu_count:
                    have = ", ".join(f"cuda:{i}" for i in range(devices.gpu_count)) or "no CUDA GPUs"
                    raise FailedPrecondition(
                        f"spec.devices.cuda.indices: cuda:{index} does not exist; this host has {have}"
                    )
            return {"kind": "cuda", "indices": indices, "count": len(indices)}
        count = int(raw["gpu_count"])
        if count < 1:
            raise InvalidArgument(f"spec.devices.gpu_count must be >= 1, got {count}")
        if count > devices.gpu_count:
            raise FailedPrecondition(
                f"spec.devices.gpu_count: the job asks for {count} GPUs but this host has {devices.gpu_count}"
            )
        return {"kind": "cuda", "indices": [], "count": count}
    count = processes or 1
    if count > devices.cpu_slots:
        raise FailedPrecondition(
            f"spec.devices: the job asks for {count} CPU process{'es' if count > 1 else ''} but the daemon "
            f"has {devices.cpu_slots} CPU slot{'s' if devices.cpu_slots != 1 else ''} (training.cpu_slots)"
        )
    return {"kind": "cpu", "indices": [], "count": count}


def _check_register_as(raw: dict[str, Any]) -> dict[str, str] | None:
    model = raw.get("model", "")
    if not model:
        if raw.get("alias"):
            raise InvalidArgument("spec.register_as.model: set the model to register to when giving an alias")
        return None
    validate_name("spec.register_as.model", model)
    alias = raw.get("alias", "")
    if alias:
        validate_name("spec.register_as.alias", alias)
        if alias in RESERVED_ALIASES:
            raise InvalidArgument(
                f"spec.register_as.alias: {alias!r} is reserved and always names the newest version"
            )
    return {"model": model, "alias": alias, "description": raw.get("description", "")}

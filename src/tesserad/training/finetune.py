"""Fine-tuning: a job that starts from a registered version's weights instead of a random start.

At submit, `check_parent` resolves the spec's `init_from` (a torch version with an
architecture) and gives the architecture the job defaults to; `check_fine_tuning` then holds
the job's architecture to the parent's weights: every tensor by name and shape, except those
of a replaced head (the tensors whose shape follows output_size), and each freeze glob must
match a parameter that would otherwise train. In the worker, `start_from_parent` loads the
weights and freezes, and `parameter_groups` gives the optimiser its final layer and the rest
(at backbone_lr_scale) as two groups.

Torch is imported inside the functions: the daemon's spec checks build models on torch's meta
device only (shapes without memory).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tesserad.errors import InvalidArgument, TesseraError
from tesserad.nn.user_modules import contain_user_code

if TYPE_CHECKING:
    from torch import nn

# Mismatched tensors named in one error; the rest are counted.
_SHOWN = 5


@dataclass(frozen=True)
class ParentFacts:
    """What submit-time checks need to know about the version a job starts from."""

    model: str
    version: int
    format: str  # safetensors (torch) or onnx
    sha256: str
    architecture: dict[str, Any] | None
    tensors: dict[str, tuple[int, ...]]  # the stored weights' names and shapes (safetensors only)
    # For an ONNX version: the torch version of the same model it was exported from (0: none).
    torch_source: int = 0

    @property
    def label(self) -> str:
        return f"{self.model} v{self.version}"


# (model, version or None, alias or None) -> ParentFacts, or NotFound.
ParentLookup = Callable[[str, int | None, str | None], ParentFacts]
Problems = list[tuple[type[TesseraError], str]]


def _invalid(problems: Problems, path: str, what: str) -> None:
    problems.append((InvalidArgument, f"{path}: {what}"))


def check_parent(
    raw: dict[str, Any], parents: ParentLookup, problems: Problems
) -> tuple[ParentFacts | None, dict[str, Any] | None]:
    """The parent a spec names (None without init_from, or with its problems recorded) and the
    architecture the job builds: the spec's, else the parent's with replace_head's output_size
    (None when that parent is not there: its problem says all there is to say)."""
    given: dict[str, Any] = raw.get("architecture") or {}
    architecture = given or (None if raw.get("init_from") is not None else given)
    ref = raw.get("init_from")
    if ref is None:
        for key in ("freeze", "replace_head", "backbone_lr_scale"):
            if key in raw:
                _invalid(
                    problems, f"spec.{key}", "applies when fine-tuning: set init_from to a torch version"
                )
        return None, architecture
    model = ref.get("model", "")
    version = int(ref.get("version", 0))
    if not model:
        _invalid(problems, "spec.init_from.model", "name the model whose version the job starts from")
        return None, architecture
    if "version" in ref and version < 1:
        _invalid(problems, "spec.init_from.version", f"must be >= 1, got {version}")
        return None, architecture
    try:
        parent = parents(model, version or None, ref.get("alias") or None)
    except TesseraError as exc:
        problems.append((type(exc), f"spec.init_from: {exc.message}"))
        return None, architecture
    if parent.format != "safetensors":
        source = (
            f"; v{parent.torch_source} is the torch version it was exported from"
            if parent.torch_source
            else ""
        )
        _invalid(
            problems,
            "spec.init_from",
            f"{parent.label} is an {parent.format.upper()} model; fine-tuning starts from a torch "
            f"(safetensors) version{source}",
        )
        return None, architecture
    if not parent.architecture:
        _invalid(
            problems,
            "spec.init_from",
            f"{parent.label} has no architecture to rebuild the model from; register it with one",
        )
        return None, architecture
    if "python" in (parent.architecture.get("family"), given.get("family")):
        # Matching the parent's tensors to the job's model builds the model at submit, which
        # would import a user module in the daemon's own process.
        _invalid(
            problems,
            "spec.init_from",
            "fine-tuning does not take the architecture family python; load the parent's weights "
            "in your module instead, or train the job from scratch",
        )
        return None, architecture
    if given:
        return parent, given
    output_size = int((raw.get("replace_head") or {}).get("output_size", 0))
    default = dict(parent.architecture)
    if output_size > 0:
        default["output_size"] = output_size
    return parent, default


def check_fine_tuning(
    raw: dict[str, Any], parent: ParentFacts, architecture: dict[str, Any], problems: Problems
) -> dict[str, Any]:
    """The job config's `fine_tune` section; `architecture` is the job's checked nn dict form."""
    replace_head = raw.get("replace_head")
    output_size = 0
    if replace_head is not None:
        output_size = int(replace_head.get("output_size", 0))
        if output_size < 1:
            _invalid(problems, "spec.replace_head.output_size", f"must be >= 1, got {output_size}")
        elif output_size != architecture["output_size"]:
            _invalid(
                problems,
                "spec.replace_head.output_size",
                f"is {output_size} but architecture.output_size is {architecture['output_size']}; "
                "set them alike (or leave the architecture out to take the parent's)",
            )
    scale = float(raw.get("backbone_lr_scale", 1.0))
    if not math.isfinite(scale) or scale <= 0:
        _invalid(
            problems,
            "spec.backbone_lr_scale",
            f"must be > 0, got {scale:g}; leave it out for 1, or freeze the parameters that should not train",
        )
    shapes, parameters = tensor_layout(architecture)
    head = head_tensors(architecture)
    _compare_tensors(parent, architecture, shapes, head, replace_head is not None, problems)
    freeze = [str(pattern) for pattern in raw.get("freeze") or []]
    frozen = frozen_parameters(parameters, freeze, head if replace_head is not None else set())
    for i, pattern in enumerate(freeze):
        if not any(fnmatch.fnmatchcase(name, pattern) for name in frozen):
            _invalid(
                problems,
                f"spec.freeze[{i}]",
                f"{pattern!r} matches no parameter that would train; the parameters are "
                f"{_listing(p for p in parameters if p not in head or replace_head is None)}",
            )
    if parameters and len(frozen) == len(parameters):
        _invalid(problems, "spec.freeze", "freezes every parameter: nothing would train")
    return {
        "model": parent.model,
        "version": parent.version,
        "sha256": parent.sha256,
        "freeze": freeze,
        "replace_head": output_size,
        "backbone_lr_scale": scale,
    }


def _compare_tensors(
    parent: ParentFacts,
    architecture: dict[str, Any],
    shapes: dict[str, tuple[int, ...]],
    head: set[str],
    replacing: bool,
    problems: Problems,
) -> None:
    """Every tensor of the job's architecture against the parent's; when the head is replaced,
    the job's new head needs nothing from the parent and the parent's head is left behind."""
    parent_architecture = parent.architecture or {}
    parent_head = head_tensors(parent_architecture)
    new_output = parent_architecture.get("output_size") != architecture["output_size"]
    found: list[str] = []
    for name, shape in shapes.items():
        if replacing and name in head:
            continue
        stored = parent.tensors.get(name)
        if stored is None:
            found.append(f"tensor {name!r} {list(shape)} of this job's architecture is not in {parent.label}")
        elif stored != shape:
            hint = "; set replace_head for a new final layer" if new_output and name in parent_head else ""
            found.append(
                f"tensor {name!r} has shape {list(stored)} in {parent.label} but {list(shape)} in this job's "
                f"architecture{hint}"
            )
    for name, stored in parent.tensors.items():
        if name not in shapes and not (replacing and name in parent_head):
            found.append(
                f"tensor {name!r} {list(stored)} of {parent.label} has no place in this job's architecture"
            )
    for message in found[:_SHOWN]:
        _invalid(problems, "spec.init_from", message)
    if len(found) > _SHOWN:
        _invalid(problems, "spec.init_from", f"and {len(found) - _SHOWN} more tensors that do not match")


def frozen_parameters(parameters: list[str], freeze: list[str], head: set[str]) -> list[str]:
    """The parameters the globs match, a replaced head's excepted (it is new and must train)."""
    return [
        name
        for name in parameters
        if name not in head and any(fnmatch.fnmatchcase(name, pattern) for pattern in freeze)
    ]


def _listing(names: Any) -> str:
    listed = list(names)
    shown = ", ".join(listed[:8])
    return shown + (f" and {len(listed) - 8} more" if len(listed) > 8 else "") if listed else "none"


# -- the model's tensors, from its architecture


def _meta_model(architecture: dict[str, Any]) -> nn.Module:
    import torch

    from tesserad.nn import build_model, spec_from_dict

    with torch.device("meta"):
        return build_model(spec_from_dict(architecture))


def tensor_layout(architecture: dict[str, Any]) -> tuple[dict[str, tuple[int, ...]], list[str]]:
    """(every stored tensor's name and shape, the trainable parameters' names) of an architecture."""
    # A python family's state_dict and named_parameters may be the user's overrides.
    with contain_user_code("reading the model's tensors ran its code, which"):
        model = _meta_model(architecture)
        shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
        return shapes, [name for name, _ in model.named_parameters()]


def tensor_mismatches(label: str, stored: dict[str, Any], architecture: dict[str, Any]) -> list[str]:
    """Each tensor that differs, by name or shape, between the architecture `stored` weights were
    trained with (in `label`, e.g. "job J's checkpoint") and a job's `architecture`: the job could
    not load them."""
    stored_shapes, _ = tensor_layout(stored)
    shapes, _ = tensor_layout(architecture)
    found: list[str] = []
    for name, shape in shapes.items():
        held = stored_shapes.get(name)
        if held is None:
            found.append(f"tensor {name!r} {list(shape)} of this job's architecture is not in {label}")
        elif held != shape:
            found.append(
                f"tensor {name!r} has shape {list(held)} in {label} but {list(shape)} in this job's architecture"
            )
    found += [
        f"tensor {name!r} {list(held)} of {label} has no place in this job's architecture"
        for name, held in stored_shapes.items()
        if name not in shapes
    ]
    return found


def head_tensors(architecture: dict[str, Any]) -> set[str]:
    """The final layer's tensors: those whose shape follows output_size."""
    if not architecture:
        return set()
    shapes, _ = tensor_layout(architecture)
    wider, _ = tensor_layout({**architecture, "output_size": int(architecture["output_size"]) + 1})
    return {name for name, shape in shapes.items() if wider.get(name) != shape}


# -- in the worker


def start_from_parent(
    model: nn.Module, weights: bytes | None, fine_tune: dict[str, Any], architecture: dict[str, Any]
) -> None:
    """Load the parent's weights into `model` (a replaced head keeps its fresh initialisation),
    unless None, and stop the frozen parameters from training."""
    import torch
    from safetensors.torch import load as load_tensors

    head = head_tensors(architecture) if fine_tune["replace_head"] else set()
    if weights is not None:
        wanted = set(model.state_dict()) - head
        state = {name: tensor for name, tensor in load_tensors(weights).items() if name in wanted}
        with torch.no_grad():
            missing, unexpected = model.load_state_dict(state, strict=False)
        # Checked at submit against these very (immutable) weights: a difference here is a bug.
        assert set(missing) <= head and not unexpected, (missing, unexpected)
    names = [name for name, _ in model.named_parameters()]
    frozen = set(frozen_parameters(names, fine_tune["freeze"], head))
    for name, parameter in model.named_parameters():
        if name in frozen:
            parameter.requires_grad_(False)


def parameter_groups(
    model: nn.Module, fine_tune: dict[str, Any], architecture: dict[str, Any]
) -> list[dict[str, Any]]:
    """The optimiser's groups: the final layer at the full rate, the rest at backbone_lr_scale
    (`lr_scale` is read by the training loop); frozen parameters in none."""
    head = head_tensors(architecture)
    groups = [
        {
            "params": [p for n, p in model.named_parameters() if n in head and p.requires_grad],
            "lr_scale": 1.0,
        },
        {
            "params": [p for n, p in model.named_parameters() if n not in head and p.requires_grad],
            "lr_scale": fine_tune["backbone_lr_scale"],
        },
    ]
    return [group for group in groups if group["params"]]

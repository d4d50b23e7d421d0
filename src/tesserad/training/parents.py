"""The jobs' view of the Registry for fine-tuning: facts about the version a job starts from."""

from __future__ import annotations

import contextlib

from safetensors import safe_open

from tesserad.errors import NotFound
from tesserad.registry import Registry
from tesserad.training.finetune import ParentFacts

# What makes a parent: a model with a version to start from ("create it with CreateModel" makes
# an empty model, which cannot be one).
_MAKE_PARENT = (
    "fine-tuning starts from one of its torch (safetensors) versions: upload one with UploadVersion, "
    "or train one with SubmitJob (register_as names the model)"
)


class ParentAccess:
    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def facts(self, model: str, version: int | None, alias: str | None) -> ParentFacts:
        """The version by number or alias ("latest" when neither); NotFound as the registry says."""
        try:
            record = self._registry.resolve(model, version=version, alias=alias)
        except NotFound as exc:
            raise (self._registry.missing_model(model, _MAKE_PARENT) or exc) from None
        tensors: dict[str, tuple[int, ...]] = {}
        torch_source = 0
        if record.format == "safetensors":
            # The registry checked the header at upload; this reads it again for the shapes.
            with self._registry.artifact_path(record) as path, safe_open(path, framework="numpy") as file:
                names: list[str] = file.keys()
                tensors = {name: tuple(file.get_slice(name).get_shape()) for name in names}
        elif record.lineage.parent_version and record.lineage.parent_model in ("", record.model):
            with contextlib.suppress(NotFound):  # the source may have been deleted since
                source = self._registry.get_version(record.model, record.lineage.parent_version)
                torch_source = source.version if source.format == "safetensors" else 0
        return ParentFacts(
            model=record.model,
            version=record.version,
            format=record.format,
            sha256=record.sha256,
            architecture=record.architecture,
            tensors=tensors,
            torch_source=torch_source,
        )

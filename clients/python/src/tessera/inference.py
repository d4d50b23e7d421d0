"""Inference: predict with numpy in and out, streaming predict, loading versions, latency stats."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, KeysView, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tessera.calls import C, Call, Given, Op, PagesUpTo, Part, ReconnectingBidi, Reconnects, call, stream
from tessera.errors import InvalidArgument, TesseraError, error_from_status_number
from tessera.explanations import Explanation, method_number
from tessera.messages import from_dict, version_ref
from tessera.models import VersionSelector, ref
from tessera.state_words import StateWord
from tessera.tensors import from_tensor, to_tensors
from tessera.transport import MODEL_CALL_TIMEOUT_S, UNLOAD_TIMEOUT_S, AioConnection, Connection, timeout_or
from tessera.typed_inputs import (
    Inputs,
    arrays,
    as_input_dtypes,
    astype_fix,
    input_dtypes,
    input_kinds,
    named_inputs,
    recast,
    untyped,
)
from tessera.v1 import common_pb2, registry_pb2
from tessera.v1 import inference_pb2 as pb

S = "Inference"


class LoadState(StateWord):
    """A loaded version's state (`LoadedModel.state`, a number in the message) as a word:
    "loading", "warming", "ready", "draining" (finishing queued requests before it is freed),
    "failed"; each is also equal to its `tessera.v1` LoadState number (see `StateWord`)."""

    UNSPECIFIED = "unspecified"
    LOADING = "loading"
    WARMING = "warming"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"

    @staticmethod
    def _numbers() -> type[pb.LoadState]:
        return pb.LoadState


@dataclass
class Prediction:
    """The outputs of one predict call by name (also reachable as `prediction["output"]`, with
    `"output" in prediction`, `keys()` and iteration over the names, as a dict's), the version
    that served it, and where the time went. In a stream, a failed request has `error` set and
    no outputs: indexing it raises that error."""

    outputs: dict[str, np.ndarray]
    model: str
    version: int
    queue_time_us: int
    compute_time_us: int
    batch_rows: int
    request_id: str = ""
    error: TesseraError | None = field(default=None)

    def __getitem__(self, name: str) -> np.ndarray:
        if self.error is not None:
            # A KeyError for the output would hide why there is none. Raised afresh each time:
            # the one object kept would grow its traceback at every raise, and it is not
            # caused by whatever the caller is handling.
            raise self.error.with_traceback(None) from None
        if name not in self.outputs:
            raise KeyError(f"{name!r}: the outputs are {sorted(self.outputs)}")
        return self.outputs[name]

    def __contains__(self, name: object) -> bool:
        return name in self.outputs

    def __iter__(self) -> Iterator[str]:
        return iter(self.outputs)

    def keys(self) -> KeysView[str]:
        """The output names."""
        return self.outputs.keys()

    @classmethod
    def from_proto(cls, response: pb.PredictResponse) -> Prediction:
        error = None
        if response.HasField("status") and response.status.code != 0:
            error = error_from_status_number(response.status.code, response.status.message)
        return cls(
            outputs={tensor.name: from_tensor(tensor) for tensor in response.outputs},
            model=response.model,
            version=response.version,
            queue_time_us=response.queue_time_us,
            compute_time_us=response.compute_time_us,
            batch_rows=response.batch_rows,
            request_id=response.request_id,
            error=error,
        )


def predict_request(
    model: str,
    inputs: Inputs,
    version: VersionSelector | None,
    alias: str | None,
    outputs: Sequence[str],
    request_id: str = "",
) -> pb.PredictRequest:
    return pb.PredictRequest(
        target=version_ref(model, version, alias),
        inputs=to_tensors(inputs),
        output_names=list(outputs),
        request_id=request_id,
    )


# A version's signature, by model and version number: a version never changes.
Signatures = dict[tuple[str, int], common_pb2.Signature]

# The version whose signature last refused a call's lists, by its target (model, version
# number, alias; neither: the deployment), so that later calls cast their lists up front rather
# than send each one twice: replaced when a refusal names another version (an alias moved, a split).
TargetVersions = dict[tuple[str, int, str], int]

# The trailer in which a daemon names, by number, the version whose signature refused a request
# (tesserad.api.errors.REFUSING_VERSION_HEADER); a daemon from before it says so only in words.
REFUSING_VERSION = "tessera-refusing-version"


def refusing_version(error: TesseraError) -> int:
    """The number of the version whose signature refused the call; 0 where the daemon says none."""
    said = error.trailers.get(REFUSING_VERSION, "")
    return int(said) if said.isdigit() else 0


@dataclass(frozen=True)
class VersionSignature(Call[common_pb2.Signature]):
    """A version's signature, kept in `signatures`: the registry's (GetVersion), else, where the
    daemon has no registry (a serving replica), the one its loaded version lists (ListLoaded);
    where neither has it, the registry's refusal is raised."""

    model: str
    version: int
    timeout: float | None
    signatures: Signatures

    def run(self, conn: Connection) -> common_pb2.Signature:
        try:
            return self._keep(conn.unary("Registry", "GetVersion", self._request(), self.timeout))
        except TesseraError as unread:
            listed = conn.unary(S, "ListLoaded", pb.ListLoadedRequest(model=self.model), self.timeout)
            return self._keep_loaded(listed, unread)

    async def run_async(self, conn: AioConnection) -> common_pb2.Signature:
        try:
            return self._keep(await conn.unary("Registry", "GetVersion", self._request(), self.timeout))
        except TesseraError as unread:
            listed = await conn.unary(S, "ListLoaded", pb.ListLoadedRequest(model=self.model), self.timeout)
            return self._keep_loaded(listed, unread)

    def _request(self) -> registry_pb2.GetVersionRequest:
        return registry_pb2.GetVersionRequest(
            ref=common_pb2.VersionRef(model=self.model, version=self.version)
        )

    def _keep(self, version: registry_pb2.ModelVersion) -> common_pb2.Signature:
        self.signatures[(self.model, self.version)] = version.signature
        return version.signature

    def _keep_loaded(self, listed: pb.ListLoadedResponse, unread: TesseraError) -> common_pb2.Signature:
        for loaded in listed.models:
            if loaded.version == self.version and loaded.HasField("signature"):
                self.signatures[(self.model, self.version)] = loaded.signature
                return loaded.signature
        raise unread


@dataclass(frozen=True)
class Predict(Call[Prediction]):
    """Predict `inputs` at `target`, lists and scalars as numpy makes them (0.5 float64, 1
    int64). Where the daemon refuses the request, the signature of the version that refused it is
    read (kept in `signatures` by version number): the version the daemon names in its trailers,
    whichever alias or deployment chose it, else (a daemon from before them) the one the target
    names by number. A list numpy made another dtype than that version's input is sent again once,
    to the same target, as that dtype, where it holds the values; an array of another dtype gets
    the cast to make said in the InvalidArgument. Where no version is named (an older daemon, an
    alias) an array's cast is the target's signature's (GetVersion), and a list's refusal is
    raised as it came; so is any refusal where the signature cannot be read."""

    target: common_pb2.VersionRef
    inputs: dict[str, np.typing.ArrayLike]
    outputs: Sequence[str]
    timeout: float | None
    signatures: Signatures
    versions: TargetVersions
    kinds: Mapping[str, str]

    def run(self, conn: Connection) -> Prediction:
        first, cast_for = self._first()
        try:
            return Prediction.from_proto(conn.unary(S, "Predict", self._request(first), self.timeout))
        except InvalidArgument as error:
            version = self._refusing(error)
            if version is None:
                raise
            try:
                signature = self._signature(version).run(conn)
            except TesseraError:
                raise error from None
            retry = self._retry_or_raise(error, signature, version, first, cast_for)
        try:
            return Prediction.from_proto(conn.unary(S, "Predict", retry, self.timeout))
        except InvalidArgument as error:
            raise self._fix_of_retry(error, signature, version) from None

    async def run_async(self, conn: AioConnection) -> Prediction:
        first, cast_for = self._first()
        try:
            return Prediction.from_proto(await conn.unary(S, "Predict", self._request(first), self.timeout))
        except InvalidArgument as error:
            version = self._refusing(error)
            if version is None:
                raise
            try:
                signature = await self._signature(version).run_async(conn)
            except TesseraError:
                raise error from None
            retry = self._retry_or_raise(error, signature, version, first, cast_for)
        try:
            return Prediction.from_proto(await conn.unary(S, "Predict", retry, self.timeout))
        except InvalidArgument as error:
            raise self._fix_of_retry(error, signature, version) from None

    def _key(self) -> tuple[str, int, str]:
        return (self.target.model, self.target.version, self.target.alias)

    def _first(self) -> tuple[Mapping[str, np.typing.ArrayLike], int]:
        """The inputs to send first, and the version whose signature cast their lists (0: none):
        as that of the version that last refused this target's lists, where one did."""
        version = self.versions.get(self._key(), 0) if untyped(self.inputs) else 0
        signature = self.signatures.get((self.target.model, version))
        if signature is None:
            return self.inputs, 0
        try:
            return as_input_dtypes(self.inputs, input_dtypes(signature)), version
        except ValueError:
            # Values that dtype cannot hold: sent as they are, for the refusal to say so.
            return self.inputs, 0

    def _refusing(self, error: InvalidArgument) -> int | None:
        """The number of the version whose signature can fix or explain `error`; 0: the target's,
        whichever version its alias names now (for an array's cast alone); None: none can."""
        said = refusing_version(error)
        if said:
            return said
        # A daemon that names no version: only a number in the target does (an alias may have
        # moved since, and without one the deployment routes the call, not the "latest" that
        # GetVersion would read).
        if self.target.version > 0:
            return self.target.version
        return 0 if arrays(self.inputs) else None

    def _retry_or_raise(
        self,
        error: InvalidArgument,
        signature: common_pb2.Signature,
        version: int,
        sent: Mapping[str, np.typing.ArrayLike],
        cast_for: int,
    ) -> pb.PredictRequest:
        """The request again with its lists as the signature's dtypes; raises `error` (with the
        cast to make for an array) where no list's dtype changes from what was `sent` (cast for
        the signature of version `cast_for`, 0: not cast) or one cannot hold its values."""
        if not (untyped(self.inputs) and version > 0) or version == cast_for:
            raise self._with_fix(error, signature) from None
        self.versions[self._key()] = version
        dtypes = input_dtypes(signature)
        try:
            typed = as_input_dtypes(self.inputs, dtypes)
        except ValueError as unheld:
            raise InvalidArgument(f"{error.daemon_message}; {unheld}", error.trailers) from None
        if not recast(self.inputs, sent, typed):
            raise self._with_fix(error, signature) from None
        return self._request(typed)

    def _request(self, inputs: Mapping[str, np.typing.ArrayLike]) -> pb.PredictRequest:
        return pb.PredictRequest(target=self.target, inputs=to_tensors(inputs), output_names=self.outputs)

    def _signature(self, version: int) -> Call[common_pb2.Signature]:
        if not version:
            # Not kept: the alias, or the model's default, may be moved to another version.
            request = registry_pb2.GetVersionRequest(ref=self.target)
            return Op("Registry", "GetVersion", request, _signature_of, self.timeout)
        kept = self.signatures.get((self.target.model, version))
        if kept is not None:
            return Given(kept)
        return VersionSignature(self.target.model, version, self.timeout, self.signatures)

    def _fix_of_retry(
        self, error: InvalidArgument, signature: common_pb2.Signature, version: int
    ) -> InvalidArgument:
        """The refusal of the request sent again, with the cast to make where the version whose
        signature was read refused it again; another version (a deployment's split) in its words."""
        again = refusing_version(error)
        if again and again != version:
            return error
        return self._with_fix(error, signature)

    def _with_fix(self, error: InvalidArgument, signature: common_pb2.Signature) -> InvalidArgument:
        fix = astype_fix(self.inputs, input_dtypes(signature), self.kinds)
        if not fix:
            return error
        return InvalidArgument(f"{error.daemon_message}; {fix}", error.trailers)


def _signature_of(version: registry_pb2.ModelVersion) -> common_pb2.Signature:
    return version.signature


def stream_requests(
    model: str,
    items: Iterable[Inputs | tuple[str, Inputs]],
    version: VersionSelector | None,
    alias: str | None,
    outputs: Sequence[str],
) -> Iterator[pb.PredictRequest]:
    """Requests of a stream; items without an id are numbered "0", "1", ... in order."""
    for index, item in enumerate(items):
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            request_id, inputs = item
        else:
            request_id, inputs = str(index), item
        yield predict_request(model, inputs, version, alias, outputs, request_id)


def _request_id(message: pb.PredictRequest | pb.PredictResponse) -> str:
    return message.request_id


def _unanswered(request: pb.PredictRequest, error: TesseraError) -> Prediction:
    """The result of a request that a broken stream took with it: failed, saying so."""
    return Prediction(
        outputs={},
        model=request.target.model,
        version=0,
        queue_time_us=0,
        compute_time_us=0,
        batch_rows=0,
        request_id=request.request_id,
        error=type(error)(
            f"request {request.request_id!r} was sent, but the stream broke before its answer came "
            f"({error.daemon_message}); it was not sent again, since the daemon may have run it: send it "
            "again if its result is still wanted"
        ),
    )


class Inference(Part[C]):
    """`client.inference`: predictions and the pool of loaded model versions."""

    def __init__(self, conn: C) -> None:
        Part.__init__(self, conn)
        self._signatures: Signatures = {}
        self._versions: TargetVersions = {}

    @call
    def predict(
        self,
        model: str,
        inputs: Inputs,
        *,
        version: VersionSelector | None = None,
        alias: str | None = None,
        outputs: Sequence[str] = (),
        timeout: float | None = None,
    ) -> Predict:
        """Run the model on a batch: `predict("clf", {"input": x})["output"]`. `version` is a
        number or an alias ("prod", the same as alias="prod"), as in every method here. Without
        version or alias the model's deployment routes the call ("latest" without one). The deadline also
        bounds the time queued: an expired request is never run (DeadlineExceeded).

        Dtypes: an input given as a list or a scalar (`[[0.1, 0.2]]`) is sent as numpy makes it
        (float64). Where the version that serves the call refuses the dtype (the one `version`
        names, or the one an alias or the deployment chose, which the daemon names), the list is
        sent again once as the dtype that version's signature gives the input (float32), if that
        dtype holds the values; the signature is read once per version number, and later calls to
        the same target (model, and version or alias) send their lists as that version's dtypes
        at once, until a refusal names another version. A daemon from
        before it names no version: there, with an alias or the deployment choosing the version,
        the refusal is raised: send `np.array(x, np.float32)` or name the version. A numpy array
        (a pandas DataFrame, a torch tensor, a numpy scalar: as their numpy arrays) is sent as
        it is: one of another dtype is refused (InvalidArgument) with the cast to make for the
        version that refused it, `x.astype(np.float32)` (`x.to(torch.float32)` for a tensor,
        `df.astype("float32")` for a frame), since casting it here could change its values
        unseen. A frame whose columns differ in dtype, or hold text, times, categories or missing
        values (<NA>), and a bfloat16 tensor are a ValueError naming the column or the input."""
        return Predict(
            version_ref(model, version, alias),
            named_inputs(inputs),
            list(outputs),
            timeout,
            self._signatures,
            self._versions,
            input_kinds(inputs),
        )

    @stream
    def predict_stream(
        self,
        model: str,
        items: Iterable[Inputs | tuple[str, Inputs]],
        *,
        version: VersionSelector | None = None,
        alias: str | None = None,
        outputs: Sequence[str] = (),
        timeout: float | None = None,
    ) -> ReconnectingBidi[Prediction]:
        """Many predictions over one stream. Each item is inputs or (request_id, inputs);
        results come as each is ready (match them by `request_id`), and a failed one carries
        `error` while the stream goes on. `timeout` bounds the whole stream (None: none).

        A cut connection or a daemon restart does not end the stream: the items not yet sent
        go on a new one (see `tessera.RetryPolicy`). An item sent and not answered when it broke
        comes back failed with Unavailable, not sent again, since the daemon may have run it
        (its work counted in the stats, a shadow version given it too): send it again if its
        result is still wanted. A daemon that stops gracefully answers the items it has read
        and says it ran no other, so those go on the new stream too."""
        requests = stream_requests(model, items, version, alias, outputs)
        reconnects = Reconnects(
            f"streaming predictions of {model}", "send the rest on a new stream", self._conn.retry, timeout
        )
        return ReconnectingBidi(
            S, "PredictStream", requests, reconnects, _request_id, _unanswered, Prediction.from_proto
        )

    @call
    def explain(
        self,
        model: str,
        inputs: Inputs,
        method: str = "integrated_gradients",
        *,
        version: VersionSelector | None = None,
        alias: str | None = None,
        target: int | None = None,
        steps: int = 0,
        baseline: float = 0.0,
        window: Sequence[int] = (),
        stride: Sequence[int] = (),
        noise: float = 0.0,
        seed: int = 0,
        timeout: float | None = None,
    ) -> Op[Explanation]:
        """Attribute each row's output `target` (default: its largest output) to every input
        position: `explain("clf", x, "ig")["input"]` has x's shape. Methods: integrated_gradients
        (ig; `steps` path steps, default 32), saliency, occlusion (`window` and `stride` per
        dimension of one row), gradient_shap (shap; `steps` samples, default 16, `noise`, `seed`).
        `baseline` is the input value compared with. An ONNX version is explained through the
        torch version it was exported from."""
        request = pb.ExplainRequest(
            target=version_ref(model, version, alias),
            inputs=to_tensors(inputs),
            method=method_number(method),
            options=pb.ExplainOptions(
                steps=steps, baseline=baseline, window=window, stride=stride, noise=noise, seed=seed
            ),
        )
        if target is not None:
            request.output_index = target
        return Op(
            S,
            "Explain",
            request,
            Explanation.from_proto,
            timeout_or(timeout, max(self._conn.timeout, MODEL_CALL_TIMEOUT_S)),
        )

    @call
    def load(
        self,
        /,
        model: str,
        version: VersionSelector | None = None,
        *,
        save_config: bool = False,
        timeout: float | None = None,
        **config: Any,
    ) -> Op[pb.LoadedModel]:
        """Load and warm up a version (default "latest"); `config` holds ServingConfig fields
        (runtime="onnx", device="cpu", max_batch_size=8, max_queue_delay_us=500, ...); a field
        left out takes the version's saved config, else the daemon's default, and
        max_queue_delay_us, warmup_runs and intra_op_threads given as 0 are 0. Loading a loaded
        version with another config swaps it without dropping requests.

        `save_config`: also store `config` as the version's saved config, in place of the one
        before (none given: remove it); the load then runs with `config` alone. Whenever the version
        is loaded again, a load that leaves a field out takes it from there: a request's, a
        repository load, serving.preload at the daemon's start, a read replica's (FailedPrecondition
        at a replica: save it at the primary); a restart loads nothing by itself."""
        request = pb.LoadModelRequest(
            target=ref(model, version),
            config=from_dict(pb.ServingConfig, config, "config"),
            save_config=save_config,
        )
        return Op(
            S,
            "LoadModel",
            request,
            timeout=timeout_or(timeout, max(self._conn.timeout, MODEL_CALL_TIMEOUT_S)),
        )

    @call
    def unload(
        self, model: str, version: VersionSelector | None = None, *, timeout: float | None = None
    ) -> Op[Sequence[pb.LoadedModel]]:
        """Drain and free a version (every loaded version of the model when None)."""
        request = pb.UnloadModelRequest(target=ref(model, version))
        return Op(
            S,
            "UnloadModel",
            request,
            lambda response: list(response.unloaded),
            timeout_or(timeout, max(self._conn.timeout, UNLOAD_TIMEOUT_S)),
        )

    @call
    def loaded(self, model: str = "", *, timeout: float | None = None) -> Op[Sequence[pb.LoadedModel]]:
        """Loaded versions (of one model, or all), with state, config and signature."""
        return Op(
            S,
            "ListLoaded",
            pb.ListLoadedRequest(model=model),
            lambda response: list(response.models),
            timeout=timeout,
        )

    @call
    def stats(
        self,
        model: str = "",
        version: VersionSelector | None = None,
        reset: bool = False,
        *,
        timeout: float | None = None,
    ) -> Op[Sequence[pb.ModelStats]]:
        """Latency percentiles (queue, compute, total), batch sizes and throughput per loaded
        version (of `model`, or of every model); `reset` zeroes the figures after reading them.
        ValueError for a `version` without a `model`."""
        request = pb.GetStatsRequest(reset=reset)
        _set_stats_target(request, model, version)
        return Op(S, "GetStats", request, lambda response: list(response.stats), timeout=timeout)

    @call
    def cluster_stats(
        self,
        model: str = "",
        version: VersionSelector | None = None,
        histograms: bool = False,
        *,
        timeout: float | None = None,
    ) -> Op[pb.GetStatsResponse]:
        """`stats` over a primary and every serving replica following it now (`tesserad serve
        --follow`), merged per version (latency histograms bucket by bucket, counts added).
        The response's `replicas` are those merged in (none: only the primary's own figures),
        `unreachable_replicas` those that did not answer. FailedPrecondition on a replica."""
        request = pb.GetStatsRequest(scope=pb.STATS_SCOPE_CLUSTER, histograms=histograms)
        _set_stats_target(request, model, version)
        return Op(S, "GetStats", request, timeout=timeout)

    @call
    def shadow_results(
        self, model: str, limit: int = 100, *, timeout: float | None = None
    ) -> PagesUpTo[pb.ShadowResult]:
        """The latest `limit` shadow comparisons of a model's deployment, newest first, fetched
        page by page (each result holds the shadow's outputs: a page ends at an answer's size);
        `timeout` bounds each page's call. 0: the daemon's default, 100."""

        def page(token: str, wanted: int) -> Op[pb.ListShadowResultsResponse]:
            request = pb.ListShadowResultsRequest(model=model, limit=wanted, page_token=token)
            return Op(S, "ListShadowResults", request, timeout=timeout)

        return PagesUpTo(page, "results", limit or 100)


def _set_stats_target(request: pb.GetStatsRequest, model: str, version: VersionSelector | None) -> None:
    """The statistics' target: a model, a version of it, or (left empty) every loaded version."""
    if version is not None and not model:
        # Refused before a call, as the SDK's other argument mistakes are (the daemon would say
        # INVALID_ARGUMENT).
        raise ValueError(f"version={version!r} picks a version of a model: give model too")
    if model:
        request.target.CopyFrom(ref(model, version))

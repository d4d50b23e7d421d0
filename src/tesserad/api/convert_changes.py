"""RegistryChange (the change feed, tesserad.replica.changes) to its proto message."""

from __future__ import annotations

from tessera.v1 import registry_pb2 as pb
from tesserad.api.convert_common import timestamp
from tesserad.api.convert_inference import config_to_proto
from tesserad.api.convert_registry import deployment_to_proto, version_to_proto
from tesserad.errors import InvalidArgument
from tesserad.replica import changes
from tesserad.serving.pool import config_of_fields

_KINDS = {
    changes.MODEL_CREATED: pb.CHANGE_KIND_MODEL_CREATED,
    changes.MODEL_DELETED: pb.CHANGE_KIND_MODEL_DELETED,
    changes.VERSION_REGISTERED: pb.CHANGE_KIND_VERSION_REGISTERED,
    changes.VERSION_DELETED: pb.CHANGE_KIND_VERSION_DELETED,
    changes.ALIAS_MOVED: pb.CHANGE_KIND_ALIAS_MOVED,
    changes.DEPLOYMENT_CHANGED: pb.CHANGE_KIND_DEPLOYMENT_CHANGED,
    changes.SERVING_CONFIG_CHANGED: pb.CHANGE_KIND_SERVING_CONFIG_CHANGED,
}


def replica_tls_from_proto(transport: pb.ReplicaTransport.ValueType) -> bool | None:
    """Whether a following replica serves TLS; None when it did not say."""
    if transport == pb.REPLICA_TRANSPORT_UNSPECIFIED:
        return None
    if transport not in (pb.REPLICA_TRANSPORT_PLAINTEXT, pb.REPLICA_TRANSPORT_TLS):
        raise InvalidArgument(
            f"replica_transport: unknown value {transport}; use PLAINTEXT or TLS, or leave it unspecified "
            "for this daemon's own TLS settings to decide"
        )
    return transport == pb.REPLICA_TRANSPORT_TLS


# A watch's heartbeats at most this often: one per answer round trip is already plenty.
MIN_HEARTBEAT_INTERVAL_MS = 100


def heartbeat_interval_from_proto(interval_ms: int) -> float:
    """WatchChangesRequest.heartbeat_interval_ms in seconds (0: no heartbeats)."""
    if interval_ms and interval_ms < MIN_HEARTBEAT_INTERVAL_MS:
        raise InvalidArgument(
            f"heartbeat_interval_ms must be 0 (no heartbeats) or at least {MIN_HEARTBEAT_INTERVAL_MS}, "
            f"got {interval_ms}"
        )
    return interval_ms / 1000


def watch_response(
    event: changes.RegistryChange | changes.CaughtUp | changes.Heartbeat, store_incarnation: str
) -> pb.WatchChangesResponse:
    if isinstance(event, changes.Heartbeat):
        return pb.WatchChangesResponse(
            heartbeat=pb.Heartbeat(seq=event.seq), store_incarnation=store_incarnation
        )
    if isinstance(event, changes.CaughtUp):
        return pb.WatchChangesResponse(
            caught_up=pb.CaughtUp(seq=event.seq), store_incarnation=store_incarnation
        )
    return pb.WatchChangesResponse(change=change_to_proto(event), store_incarnation=store_incarnation)


def change_to_proto(change: changes.RegistryChange) -> pb.RegistryChange:
    message = pb.RegistryChange(
        seq=change.seq,
        time=timestamp(change.time),
        model=change.model,
        kinds=[_KINDS[k] for k in change.kinds],
    )
    state = change.state
    if state is not None:
        message.state.CopyFrom(
            pb.ModelServingState(
                latest_version=state.latest_version,
                version_count=state.version_count,
                aliases=state.aliases,
                versions=[version_to_proto(v) for v in state.versions],
                serving_configs={
                    version: config_to_proto(config_of_fields(fields))
                    for version, fields in state.serving_configs.items()
                },
            )
        )
        if state.created_at:
            message.state.created_at.CopyFrom(timestamp(state.created_at))
        if state.deployment is not None:
            message.state.deployment.CopyFrom(deployment_to_proto(state.deployment))
    return message

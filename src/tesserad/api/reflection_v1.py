"""grpc.reflection.v1.ServerReflection beside v1alpha: grpcio-reflection (1.85) serves only
v1alpha (grpc/grpc#38576), and clients that ask v1 first (grpcurl, grpc-java's tools) or only
(tonic's, Helidon's) would find no reflection.

v1's reflection.proto is v1alpha's under another package, message for message and field for
field, so v1alpha's servicer answers v1 calls with v1alpha's (de)serialisers, byte for byte. v1's
descriptors are made from v1alpha's (its file renamed, its package and type names moved), for
the role table and for reflection to describe its own service.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import ServiceDescriptor
from grpc_reflection.v1alpha import reflection_pb2

SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
_FILE = "grpc/reflection/v1/reflection.proto"
_V1ALPHA_TYPES = ".grpc.reflection.v1alpha."
_V1_TYPES = ".grpc.reflection.v1."


def service_descriptor() -> ServiceDescriptor:
    """v1's ServerReflection, added to the default descriptor pool at the first call."""
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(_FILE)
    except KeyError:
        proto = descriptor_pb2.FileDescriptorProto()
        reflection_pb2.DESCRIPTOR.CopyToProto(proto)
        proto.name = _FILE
        proto.package = "grpc.reflection.v1"
        proto.ClearField("options")  # v1alpha's: its Java and Go packages, and deprecated
        for message in proto.message_type:
            for field in message.field:
                if field.HasField("type_name"):
                    field.type_name = field.type_name.replace(_V1ALPHA_TYPES, _V1_TYPES)
        for service in proto.service:
            for method in service.method:
                method.input_type = method.input_type.replace(_V1ALPHA_TYPES, _V1_TYPES)
                method.output_type = method.output_type.replace(_V1ALPHA_TYPES, _V1_TYPES)
        pool.AddSerializedFile(proto.SerializeToString())
    descriptor: ServiceDescriptor = pool.FindServiceByName(SERVICE_NAME)
    return descriptor


def method_handlers(servicer: Any) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    """v1's methods, answered by `servicer`, grpcio-reflection's v1alpha servicer."""
    return {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        )
    }

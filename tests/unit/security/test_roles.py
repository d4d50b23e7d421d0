"""The role table covers every RPC the daemon serves, and follows the issue's role rules."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from tessera.v1 import datasets_pb2, inference_pb2, registry_pb2, system_pb2, training_pb2
from tesserad.api import reflection_v1
from tesserad.oip import grpc_service_pb2
from tesserad.security import MissingRoleError, Role, required_roles
from tesserad.security.roles import HEALTH_METHODS, LOG_SETTINGS_UPDATE, ROLE_TABLE, TRACE_SETTINGS_UPDATE

PROTOS = Path(__file__).resolve().parents[3] / "protos"
PROTO_MODULES = [system_pb2, registry_pb2, datasets_pb2, training_pb2, inference_pb2, grpc_service_pb2]
SERVED = [
    *(service for module in PROTO_MODULES for service in module.DESCRIPTOR.services_by_name.values()),
    health_pb2.DESCRIPTOR.services_by_name["Health"],
    reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
    reflection_v1.service_descriptor(),
]


def test_every_rpc_of_every_service_in_protos_has_a_role():
    roles = required_roles(SERVED)
    expected = {f"/{s.full_name}/{m.name}" for s in SERVED for m in s.methods}
    assert set(roles) == expected
    # Every `rpc` line of every .proto under protos/ is among them.
    declared = {
        match.group(1)
        for proto in PROTOS.rglob("*.proto")
        for match in re.finditer(r"^\s*rpc\s+(\w+)\s*\(", proto.read_text(), re.MULTILINE)
    }
    assert declared <= {path.rsplit("/", 1)[1] for path in roles}
    assert len(declared) >= 80


def test_the_table_names_no_service_that_is_not_served():
    assert set(ROLE_TABLE) == {service.full_name for service in SERVED}


@pytest.mark.parametrize(
    ("prefixes", "role"),
    [
        (("Get", "List", "Watch", "Compare", "Predict", "Download", "Leaderboard"), Role.READER),
        (("Upload", "Submit", "Cancel", "Log", "Create", "Update", "Export"), Role.TRAINER),
        (("Delete", "SetAlias", "Deploy", "Rollback", "LoadModel", "UnloadModel"), Role.ADMIN),
    ],
)
def test_tessera_rpcs_follow_the_role_rules(prefixes, role):
    """reader: get, list, watch, predict, stats; trainer: + upload, submit, cancel, log metrics;
    admin: + delete, alias, deploy, rollback, load, unload."""
    matched = 0
    for service, methods in ROLE_TABLE.items():
        if not service.startswith("tessera.v1."):
            continue
        for method, required in methods.items():
            if method.startswith(prefixes):
                assert required == role, f"{service}/{method}"
                matched += 1
    assert matched >= 3


def test_oip_model_repository_changes_need_admin_and_inference_needs_reader():
    oip = ROLE_TABLE["inference.GRPCInferenceService"]
    assert oip["ModelInfer"] == oip["ModelStreamInfer"] == Role.READER
    assert oip["RepositoryModelLoad"] == oip["RepositoryModelUnload"] == Role.ADMIN
    # Registering shared memory maps a client's memory into the daemon: as loading a model.
    assert oip["SystemSharedMemoryRegister"] == oip["SystemSharedMemoryUnregister"] == Role.ADMIN
    assert oip["SystemSharedMemoryStatus"] == Role.READER


def test_health_methods_are_in_the_table():
    roles = required_roles(SERVED)
    assert set(roles) >= HEALTH_METHODS


def fake_service(methods: list[str]):
    """A ServiceDescriptor `test.v1.Fake` with the given RPCs (Empty in, Empty out)."""
    file = descriptor_pb2.FileDescriptorProto(name="fake.proto", package="test.v1", syntax="proto3")
    file.message_type.add(name="Empty")
    service = file.service.add(name="Fake")
    for name in methods:
        service.method.add(name=name, input_type=".test.v1.Empty", output_type=".test.v1.Empty")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return pool.FindServiceByName("test.v1.Fake")


def test_an_rpc_without_a_role_fails_loudly_naming_it(monkeypatch):
    monkeypatch.setitem(ROLE_TABLE, "test.v1.Fake", {"Read": Role.READER})
    with pytest.raises(MissingRoleError) as err:
        required_roles([fake_service(["Read", "Wipe"])])
    assert "test.v1.Fake/Wipe has no role" in str(err.value)
    assert "test.v1.Fake/Read" not in str(err.value)


def test_a_service_missing_from_the_table_fails_for_each_rpc():
    with pytest.raises(MissingRoleError) as err:
        required_roles([fake_service(["A", "B"])])
    assert "test.v1.Fake/A has no role" in str(err.value)
    assert "test.v1.Fake/B has no role" in str(err.value)


def test_a_role_for_an_rpc_that_does_not_exist_fails(monkeypatch):
    monkeypatch.setitem(ROLE_TABLE, "test.v1.Fake", {"A": Role.READER, "Renamed": Role.ADMIN})
    with pytest.raises(MissingRoleError) as err:
        required_roles([fake_service(["A"])])
    assert "test.v1.Fake/Renamed has a role but the service has no such RPC" in str(err.value)


def test_roles_are_ordered_and_parsed():
    assert Role.READER < Role.TRAINER < Role.ADMIN
    assert Role.parse(" Admin ") is Role.ADMIN
    with pytest.raises(ValueError, match="expected one of reader, trainer, admin"):
        Role.parse("root")


def test_reading_the_log_settings_needs_reader_and_changing_them_admin():
    assert ROLE_TABLE["inference.GRPCInferenceService"]["LogSettings"] == Role.READER
    assert LOG_SETTINGS_UPDATE == Role.ADMIN


def test_reading_the_trace_settings_needs_reader_and_changing_them_admin():
    assert ROLE_TABLE["inference.GRPCInferenceService"]["TraceSetting"] == Role.READER
    assert TRACE_SETTINGS_UPDATE == Role.ADMIN

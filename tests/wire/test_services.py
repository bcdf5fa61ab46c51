"""Every gRPC service the API must serve exists in the generated code, under both names.

The original's names (so existing clients keep working) must match the original's methods and
message types exactly; the README's names are aliases with exactly the same methods and types, so
one servicer implementation can be registered under both.
"""

from __future__ import annotations

import importlib
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.descriptor_pool import DescriptorPool

# service full name -> generated gRPC module that serves it
SERVICE_MODULES = {
    "pkg.kannon.mailer.apiv1.Mailer": "kannon.pb.mailer.apiv1.mailerapiv1_pb2_grpc",
    "pkg.kannon.admin.apiv1.Api": "kannon.pb.admin.apiv1.adminapiv1_pb2_grpc",
    "pkg.kannon.admin.apiv1.HZService": "kannon.pb.admin.apiv1.hz_pb2_grpc",
    "kannon.StatsApiV1": "kannon.pb.stats.apiv1.statsapiv1_pb2_grpc",
    "kannon.stats.apiv2.StatsApiV2": "kannon.pb.stats.apiv2.statsapiv2_pb2_grpc",
    "kannon.mailer.apiv1.MailerApiV1Service": "kannon.pb.aliases.mailerapiv1service_pb2_grpc",
    "kannon.admin.apiv1.AdminApiV1Service": "kannon.pb.aliases.adminapiv1service_pb2_grpc",
    "kannon.stats.apiv1.StatsApiV1Service": "kannon.pb.aliases.statsapiv1service_pb2_grpc",
    "kannon.suppression.apiv1.SuppressionApiV1Service": (
        "kannon.pb.suppression.apiv1.suppressionapiv1_pb2_grpc"
    ),
}

# README name -> the original's name it stands for
ALIASES = {
    "kannon.mailer.apiv1.MailerApiV1Service": "pkg.kannon.mailer.apiv1.Mailer",
    "kannon.admin.apiv1.AdminApiV1Service": "pkg.kannon.admin.apiv1.Api",
    "kannon.stats.apiv1.StatsApiV1Service": "kannon.StatsApiV1",
}


def signature(service: ServiceDescriptor) -> list[tuple[str, str, str, bool, bool]]:
    return [
        (
            m.name,
            m.input_type.full_name,
            m.output_type.full_name,
            m.client_streaming,
            m.server_streaming,
        )
        for m in service.methods
    ]


@pytest.mark.parametrize("service_name", SERVICE_MODULES)
def test_service_exists_with_generated_stub_and_servicer(
    ours: DescriptorPool, service_name: str
) -> None:
    service = ours.FindServiceByName(service_name)
    module = importlib.import_module(SERVICE_MODULES[service_name])
    assert hasattr(module, f"{service.name}Stub")
    assert hasattr(module, f"{service.name}Servicer")
    assert hasattr(module, f"add_{service.name}Servicer_to_server")


def test_every_original_service_is_listed(original_service_names: list[str]) -> None:
    assert len(original_service_names) == 5
    assert set(original_service_names) <= set(SERVICE_MODULES)


# Methods added after v0.5.1: the original HEAD's (spec §8) and Kannon's own.
ADDED_METHODS = {
    "pkg.kannon.admin.apiv1.Api": {
        "SetTrackingPolicy",  # the original's HEAD
        "SetOneClickUnsubscribe",
        "ListDkimKeys",
        "RotateDkimKeys",
        "ConfirmDkimKeys",
        "CheckDomain",
    },
}


def test_same_methods_as_the_original(
    original: DescriptorPool, ours: DescriptorPool, original_service: str
) -> None:
    theirs = signature(original.FindServiceByName(original_service))
    mine = signature(ours.FindServiceByName(original_service))
    # The original's methods first, unchanged; then only the listed additions.
    assert mine[: len(theirs)] == theirs
    added = {m[0] for m in mine[len(theirs) :]}
    assert added == ADDED_METHODS.get(original_service, set())


@pytest.mark.parametrize(("alias", "target"), ALIASES.items())
def test_alias_has_the_same_methods(ours: DescriptorPool, alias: str, target: str) -> None:
    alias_signature = signature(ours.FindServiceByName(alias))
    assert alias_signature
    assert alias_signature == signature(ours.FindServiceByName(target))


async def test_one_servicer_answers_under_both_mailer_names() -> None:
    """A real gRPC call through each name's generated stub reaches the same implementation."""
    from kannon.pb.aliases import mailerapiv1service_pb2_grpc as alias_grpc
    from kannon.pb.mailer.apiv1 import mailerapiv1_pb2 as mailer_pb2
    from kannon.pb.mailer.apiv1 import mailerapiv1_pb2_grpc as mailer_grpc

    class Mailer(mailer_grpc.MailerServicer):
        async def SendHTML(self, request: Any, context: Any) -> Any:
            return mailer_pb2.SendRes(message_id=f"msg_{request.subject}@example.test")

    server = grpc.aio.server()
    mailer_grpc.add_MailerServicer_to_server(Mailer(), server)
    alias_grpc.add_MailerApiV1ServiceServicer_to_server(Mailer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            request = mailer_pb2.SendHTMLReq(subject="hello")
            original = await mailer_grpc.MailerStub(channel).SendHTML(request, timeout=10)
            alias = await alias_grpc.MailerApiV1ServiceStub(channel).SendHTML(request, timeout=10)
    finally:
        await server.stop(None)
    assert original.message_id == alias.message_id == "msg_hello@example.test"

"""Shared ground for the wire tests: the original's descriptors and ours.

The original's .proto files (tests/wire/original_protos, restated from the spec) are compiled with
grpc_tools' protoc into a FileDescriptorSet and loaded into a fresh DescriptorPool, so their
message classes never touch the default pool where our generated modules (kannon.pb...) register
the same full names. Compilation happens once, at collection time, because the tests are
parametrized by the original's messages.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
import tempfile
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import Descriptor
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_tools import protoc

ORIGINAL_PROTOS = Path(__file__).parent / "original_protos"


@functools.cache
def original_file_set() -> descriptor_pb2.FileDescriptorSet:
    """The original's .proto files (with their imports) compiled to descriptors."""
    sources = sorted(
        p.relative_to(ORIGINAL_PROTOS).as_posix() for p in ORIGINAL_PROTOS.rglob("*.proto")
    )
    assert sources, f"no fixtures under {ORIGINAL_PROTOS}"
    with tempfile.TemporaryDirectory(prefix="kannon-original-proto-") as tmp:
        out = Path(tmp) / "original.binpb"
        rc = protoc.main(
            [
                "grpc_tools.protoc",
                f"--proto_path={ORIGINAL_PROTOS}",
                f"--proto_path={resources.files('grpc_tools') / '_proto'}",
                f"--descriptor_set_out={out}",
                "--include_imports",
                *sources,
            ]
        )
        assert rc == 0, "protoc could not compile the original's .proto fixtures"
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


@functools.cache
def original_pool() -> DescriptorPool:
    """A private pool holding only the original's files (and google/protobuf imports)."""
    pool = descriptor_pool.DescriptorPool()
    # --include_imports lists dependencies before their dependents.
    for file_proto in original_file_set().file:
        pool.Add(file_proto)
    return pool


def original_file_names() -> list[str]:
    """The original's own files (not the well-known imports)."""
    return [f.name for f in original_file_set().file if not f.name.startswith("google/")]


def _walk_messages(desc: Descriptor) -> Iterator[Descriptor]:
    if desc.GetOptions().map_entry:
        return  # covered through the map field that owns it
    yield desc
    for nested in desc.nested_types:
        yield from _walk_messages(nested)


def original_messages() -> list[Descriptor]:
    """Every message the original declares, nested ones included, map entries excluded."""
    pool = original_pool()
    found: list[Descriptor] = []
    for name in original_file_names():
        file_desc = pool.FindFileByName(name)
        for top in file_desc.message_types_by_name.values():
            found.extend(_walk_messages(top))
    return found


def original_services() -> list[str]:
    pool = original_pool()
    return [
        service.full_name
        for name in original_file_names()
        for service in pool.FindFileByName(name).services_by_name.values()
    ]


@functools.cache
def our_modules() -> tuple[ModuleType, ...]:
    """Import every generated module under kannon.pb so its descriptors reach the default pool."""
    import kannon.pb

    modules = []
    for info in pkgutil.walk_packages(kannon.pb.__path__, prefix="kannon.pb."):
        if info.name.endswith(("_pb2", "_pb2_grpc")):
            modules.append(importlib.import_module(info.name))
    assert modules, "no generated modules under kannon.pb; run scripts/generate_proto.py"
    return tuple(modules)


@pytest.fixture(scope="session")
def original() -> DescriptorPool:
    return original_pool()


@pytest.fixture(scope="session")
def original_service_names() -> list[str]:
    return original_services()


@pytest.fixture(scope="session")
def ours() -> DescriptorPool:
    our_modules()
    return descriptor_pool.Default()


def _reachable_oneofs(desc: Descriptor) -> list[tuple[str, list[str]]]:
    """(oneof full name, its field names) for every real oneof reachable from a message."""
    found: dict[str, list[str]] = {}
    seen: set[str] = set()
    stack = [desc]
    while stack:
        current = stack.pop()
        if current.full_name in seen:
            continue
        seen.add(current.full_name)
        for oneof in current.oneofs:
            if len(oneof.fields) > 1:  # single-field oneofs are proto3 `optional` presence
                found[oneof.full_name] = [f.name for f in oneof.fields]
        stack.extend(f.message_type for f in current.fields if f.message_type is not None)
    return sorted(found.items())


def roundtrip_cases() -> list[tuple[str, dict[str, str]]]:
    """One case per original message, or one per oneof member for messages that reach a oneof."""
    cases: list[tuple[str, dict[str, str]]] = []
    for desc in original_messages():
        oneofs = _reachable_oneofs(desc)
        if not oneofs:
            cases.append((desc.full_name, {}))
        for oneof_name, members in oneofs:
            cases.extend((desc.full_name, {oneof_name: member}) for member in members)
    return cases


def _case_id(case: tuple[str, dict[str, str]]) -> str:
    name, choices = case
    return f"{name}[{','.join(choices.values())}]" if choices else name


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "original_message" in metafunc.fixturenames:
        names = [d.full_name for d in original_messages()]
        metafunc.parametrize("original_message", names, ids=names)
    if "roundtrip_case" in metafunc.fixturenames:
        cases = roundtrip_cases()
        metafunc.parametrize("roundtrip_case", cases, ids=[_case_id(c) for c in cases])
    if "original_service" in metafunc.fixturenames:
        services = original_services()
        metafunc.parametrize("original_service", services, ids=services)

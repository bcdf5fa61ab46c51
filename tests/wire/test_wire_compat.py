"""Our generated messages are wire-compatible with the original's, in both directions.

For every message the original declares (tests/wire/original_protos): ours has the same full name
and every original field with the same number, name, type, cardinality and presence; a fully
populated message of ours parses with the original's class with every original field intact; a
fully populated original message parses with ours and re-serializes to the very same bytes.
Also pins the additions (their numbers must not collide with what the original's HEAD used).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import Message

TIMESTAMP = "google.protobuf.Timestamp"


def is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and bool(field.message_type.GetOptions().map_entry)


def scalar(field: FieldDescriptor, index: int) -> Any:
    """A non-default value for a scalar field, chosen so a type mix-up changes it on the wire.

    Negative signed ints and unsigned values above the signed range make int32/uint32 or
    int64/sint64 confusions visible; strings are non-ASCII; bytes are not valid UTF-8.
    """
    t = field.type
    n = field.number + index
    if t == FieldDescriptor.TYPE_STRING:
        return f"{field.name}-{index}-ünï✓"
    if t == FieldDescriptor.TYPE_BYTES:
        return b"\x00\xff\xfe" + f"{field.name}-{index}".encode()
    if t == FieldDescriptor.TYPE_BOOL:
        return index == 0
    if t in (
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SFIXED32,
    ):
        return -(1000 + n)
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return 4_000_000_000 + n
    if t in (
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_SFIXED64,
    ):
        return -(2**40 + n)
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return 2**63 + n
    if t in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return 1.5 + n
    if t == FieldDescriptor.TYPE_ENUM:
        non_zero = [v.number for v in field.enum_type.values if v.number != 0]
        return non_zero[index % len(non_zero)]
    raise AssertionError(f"no filler for field type {t} ({field.full_name})")


def skipped_oneof_members(desc: Descriptor, choices: Mapping[str, str]) -> set[str]:
    """Members of real oneofs other than the chosen one (default: the first member)."""
    skipped: set[str] = set()
    for oneof in desc.oneofs:
        if len(oneof.fields) > 1:
            chosen = choices.get(oneof.full_name, oneof.fields[0].name)
            skipped |= {f.name for f in oneof.fields if f.name != chosen}
    return skipped


def fill(msg: Message, choices: Mapping[str, str], depth: int = 0) -> None:
    """Set every field of msg (recursively) to a non-default value, one member per oneof."""
    assert depth < 10, "message nesting too deep (recursive type?)"
    desc = msg.DESCRIPTOR
    if desc.full_name == TIMESTAMP:
        msg.seconds = 1_767_225_600 + depth
        msg.nanos = 123_456_789
        return
    skipped = skipped_oneof_members(desc, choices)
    for field in desc.fields:
        if field.name in skipped:
            continue
        # getattr/setattr by name: some field names (`from`) are Python keywords.
        if is_map(field):
            key_field = field.message_type.fields_by_name["key"]
            value_field = field.message_type.fields_by_name["value"]
            entries = getattr(msg, field.name)
            for i in range(2):
                key = scalar(key_field, i)
                if value_field.message_type is not None:
                    fill(entries[key], choices, depth + 1)
                else:
                    entries[key] = scalar(value_field, i)
        elif field.is_repeated:
            items = getattr(msg, field.name)
            for i in range(2):
                if field.message_type is not None:
                    fill(items.add(), choices, depth + 1)
                else:
                    items.append(scalar(field, i))
        elif field.message_type is not None:
            child = getattr(msg, field.name)
            child.SetInParent()  # empty messages (StatsDataAccepted) must still be present
            fill(child, choices, depth + 1)
        else:
            setattr(msg, field.name, scalar(field, 0))


def assert_fully_set(msg: Message, choices: Mapping[str, str], path: str = "") -> None:
    """Every field (but unchosen oneof members) is present: guards against a vacuous filler."""
    desc = msg.DESCRIPTOR
    if desc.full_name == TIMESTAMP:
        return
    present = {f.name: value for f, value in msg.ListFields()}
    skipped = skipped_oneof_members(desc, choices)
    for field in desc.fields:
        where = f"{path}{desc.name}.{field.name}"
        if field.name in skipped:
            assert field.name not in present, f"{where}: unchosen oneof member is set"
            continue
        assert field.name in present, f"{where} did not survive the round trip"
        value = present[field.name]
        if is_map(field):
            assert len(value) == 2, where
            if field.message_type.fields_by_name["value"].message_type is not None:
                for entry in value.values():
                    assert_fully_set(entry, choices, f"{where}.")
        elif field.message_type is not None:
            for item in value if field.is_repeated else [value]:
                assert_fully_set(item, choices, f"{where}.")
        elif field.is_repeated:
            assert len(value) == 2, where


def project(data: Mapping[str, Any], desc: Descriptor) -> dict[str, Any]:
    """Keep only the keys the (original's) descriptor knows, recursively."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        field = desc.fields_by_name.get(key)
        if field is None:
            continue
        sub = field.message_type
        if sub is not None and sub.full_name.startswith("google.protobuf."):
            out[key] = value  # well-known types have their own JSON form
        elif is_map(field):
            value_desc = sub.fields_by_name["value"].message_type
            out[key] = (
                {k: project(v, value_desc) for k, v in value.items()} if value_desc else value
            )
        elif sub is not None and field.is_repeated:
            out[key] = [project(item, sub) for item in value]
        elif sub is not None:
            out[key] = project(value, sub)
        else:
            out[key] = value
    return out


def as_dict(msg: Message) -> dict[str, Any]:
    result: dict[str, Any] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    return result


def message_class(pool: DescriptorPool, full_name: str) -> type[Message]:
    cls: type[Message] = message_factory.GetMessageClass(pool.FindMessageTypeByName(full_name))
    return cls


# Messages per original file, counted from spec §1.4-1.6: guards the fixtures themselves, since a
# file that went missing would silently shrink the parametrized tests below.
ORIGINAL_MESSAGE_COUNTS = {
    "kannon/admin/apiv1/adminapiv1.proto": 26,
    "kannon/admin/apiv1/hz.proto": 2,
    "kannon/mailer/apiv1/mailerapiv1.proto": 4,
    "kannon/mailer/types/email.proto": 1,
    "kannon/mailer/types/send.proto": 3,
    "kannon/stats/apiv1/statsapiv1.proto": 4,
    "kannon/stats/apiv2/statsapiv2.proto": 2,
    "kannon/stats/types/stats.proto": 11,
}


@pytest.mark.parametrize(("file_name", "count"), ORIGINAL_MESSAGE_COUNTS.items())
def test_original_fixture_is_complete(original: DescriptorPool, file_name: str, count: int) -> None:
    assert len(original.FindFileByName(file_name).message_types_by_name) == count


def test_same_fields(original: DescriptorPool, ours: DescriptorPool, original_message: str) -> None:
    theirs = original.FindMessageTypeByName(original_message)
    try:
        mine = ours.FindMessageTypeByName(original_message)
    except KeyError:
        pytest.fail(f"our generated code has no message {original_message}")
    for field in theirs.fields:
        counterpart = mine.fields_by_number.get(field.number)
        assert counterpart is not None, f"{field.full_name} (#{field.number}) is missing"

        def shape(f: FieldDescriptor) -> dict[str, Any]:
            oneof = f.containing_oneof
            return {
                "name": f.name,
                "json_name": f.json_name,
                "type": f.type,
                "repeated": f.is_repeated,
                "required": f.is_required,
                "presence": f.has_presence,
                "map": is_map(f),
                "message": f.message_type.full_name if f.message_type and not is_map(f) else None,
                "map_types": (
                    [
                        (x.type, x.message_type and x.message_type.full_name)
                        for x in f.message_type.fields
                    ]
                    if is_map(f)
                    else None
                ),
                "enum": f.enum_type.full_name if f.enum_type else None,
                "oneof": oneof.name if oneof else None,
            }

        assert shape(counterpart) == shape(field), field.full_name


def test_ours_to_original(
    original: DescriptorPool, ours: DescriptorPool, roundtrip_case: tuple[str, dict[str, str]]
) -> None:
    name, choices = roundtrip_case
    mine = message_class(ours, name)()
    fill(mine, choices)  # every field of ours, additions included
    assert_fully_set(mine, choices)

    parsed = message_class(original, name).FromString(mine.SerializeToString())

    assert_fully_set(parsed, choices)
    assert as_dict(parsed) == project(as_dict(mine), parsed.DESCRIPTOR)


def test_original_to_ours(
    original: DescriptorPool, ours: DescriptorPool, roundtrip_case: tuple[str, dict[str, str]]
) -> None:
    name, choices = roundtrip_case
    theirs = message_class(original, name)()
    fill(theirs, choices)
    assert_fully_set(theirs, choices)
    wire = theirs.SerializeToString(deterministic=True)

    parsed = message_class(ours, name).FromString(wire)

    assert as_dict(parsed) == as_dict(theirs)
    assert parsed.SerializeToString(deterministic=True) == wire


def test_round_trip_catches_a_retyped_field(original: DescriptorPool) -> None:
    """The filler's values expose a retyping: uint32 `code` read back as int32 changes."""
    files = []
    for file_name in ("google/protobuf/timestamp.proto", "kannon/stats/types/stats.proto"):
        file_proto = descriptor_pb2.FileDescriptorProto()
        original.FindFileByName(file_name).CopyToProto(file_proto)
        files.append(file_proto)
    bounced = next(m for m in files[1].message_type if m.name == "StatsDataBounced")
    code = next(f for f in bounced.field if f.name == "code")
    code.type = descriptor_pb2.FieldDescriptorProto.TYPE_INT32
    mutant_pool = descriptor_pool.DescriptorPool()
    for file_proto in files:
        mutant_pool.Add(file_proto)
    name = "pkg.kannon.stats.types.StatsDataBounced"
    theirs = message_class(original, name)()
    fill(theirs, {})

    mutant = message_class(mutant_pool, name).FromString(theirs.SerializeToString())

    assert as_dict(mutant) != as_dict(theirs)


STRING = FieldDescriptor.TYPE_STRING
BOOL = FieldDescriptor.TYPE_BOOL
INT32 = FieldDescriptor.TYPE_INT32
MESSAGE = FieldDescriptor.TYPE_MESSAGE
ENUM = FieldDescriptor.TYPE_ENUM

# Additions: (message, field number) -> (name, type, repeated, message type or None).
ADMIN = "pkg.kannon.admin.apiv1"
MAILER = "pkg.kannon.mailer.apiv1"
STATS = "pkg.kannon.stats.types"
TYPES = "pkg.kannon.mailer.types"
TRACKING = "pkg.kannon.tracking.types"
TRACKING_POLICY = f"{TRACKING}.TrackingPolicy"
ONE_CLICK = f"{TYPES}.OneClickUnsubscribe"
ADDITIONS: dict[tuple[str, int], tuple[str, int, bool, str | None]] = {
    (f"{STATS}.StatsDataFailed", 1): ("reason", STRING, False, None),
    (f"{STATS}.StatsDataBounced", 4): ("status", STRING, False, None),
    (f"{STATS}.StatsDataBounced", 5): ("reason", STRING, False, None),
    (f"{STATS}.StatsDataBounced", 6): ("hard_bounce", BOOL, False, None),
    (f"{STATS}.StatsDataBounced", 7): ("remote_mta", STRING, False, None),
    (f"{STATS}.StatsDataBounced", 8): ("from_dsn", BOOL, False, None),
    (f"{ADMIN}.Domain", 5): ("dkim_selector", STRING, False, None),
    (f"{ADMIN}.Domain", 6): ("dns_records", MESSAGE, True, f"{ADMIN}.DnsRecord"),
    (f"{ADMIN}.DnsRecord", 1): ("type", STRING, False, None),
    (f"{ADMIN}.DnsRecord", 2): ("name", STRING, False, None),
    (f"{ADMIN}.DnsRecord", 3): ("value", STRING, False, None),
    (f"{ADMIN}.DnsRecord", 4): ("purpose", STRING, False, None),
    # Same numbers and types as the original's HEAD (spec §8, intake reporting).
    (f"{MAILER}.SendRes", 4): ("accepted_count", INT32, False, None),
    (f"{MAILER}.SendRes", 5): ("rejected_count", INT32, False, None),
    (f"{MAILER}.SendRes", 6): ("rejected_recipients", MESSAGE, True, f"{MAILER}.RejectedRecipient"),
    (f"{MAILER}.RejectedRecipient", 1): ("email", STRING, False, None),
    (f"{MAILER}.RejectedRecipient", 2): ("reason", STRING, False, None),
    # Same numbers and types as the original's HEAD (spec §8, Tracking Policy, one-click).
    (f"{ADMIN}.Domain", 4): ("tracking", MESSAGE, False, TRACKING_POLICY),
    (f"{MAILER}.SendHTMLReq", 10): ("tracking", MESSAGE, False, TRACKING_POLICY),
    (f"{MAILER}.SendTemplateReq", 10): ("tracking", MESSAGE, False, TRACKING_POLICY),
    (f"{MAILER}.SendHTMLReq", 11): ("one_click_unsubscribe", MESSAGE, False, ONE_CLICK),
    (f"{MAILER}.SendTemplateReq", 11): ("one_click_unsubscribe", MESSAGE, False, ONE_CLICK),
    (f"{TYPES}.Recipient", 3): ("tracking", MESSAGE, False, TRACKING_POLICY),
    (f"{TYPES}.OneClickUnsubscribe", 1): ("url_template", STRING, False, None),
    (f"{TRACKING}.TrackingPolicy", 1): ("opens", ENUM, False, None),
    (f"{TRACKING}.TrackingPolicy", 2): ("links", ENUM, False, None),
    (f"{STATS}.Stats", 7): ("tracking_mode", ENUM, False, None),
    (f"{ADMIN}.SetTrackingPolicyReq", 1): ("domain", STRING, False, None),
    (f"{ADMIN}.SetTrackingPolicyReq", 2): ("tracking", MESSAGE, False, TRACKING_POLICY),
    (f"{ADMIN}.SetTrackingPolicyRes", 1): ("domain", MESSAGE, False, f"{ADMIN}.Domain"),
    # Kannon's own additions.
    (f"{STATS}.StatsData", 10): ("unsubscribed", MESSAGE, False, f"{STATS}.StatsDataUnsubscribed"),
    (f"{ADMIN}.Domain", 7): ("one_click_unsubscribe", BOOL, False, None),
    (f"{ADMIN}.Domain", 8): ("dkim_keys", MESSAGE, True, f"{ADMIN}.DkimKey"),
}

# The original HEAD's TrackingMode: names and numbers (spec §8).
TRACKING_MODES = {
    "TRACKING_MODE_UNSPECIFIED": 0,
    "TRACKING_MODE_OFF": 1,
    "TRACKING_MODE_ANONYMOUS": 2,
    "TRACKING_MODE_PSEUDONYMOUS": 3,
    "TRACKING_MODE_IDENTIFIED": 4,
    "TRACKING_MODE_FULL": 5,
}


def test_tracking_mode_enum(ours: DescriptorPool) -> None:
    enum = ours.FindEnumTypeByName(f"{TRACKING}.TrackingMode")
    assert {v.name: v.number for v in enum.values} == TRACKING_MODES
    for message in ("TrackingPolicy",):
        desc = ours.FindMessageTypeByName(f"{TRACKING}.{message}")
        assert {f.enum_type.full_name for f in desc.fields} == {enum.full_name}
    stats = ours.FindMessageTypeByName(f"{STATS}.Stats").fields_by_number[7]
    assert stats.enum_type.full_name == enum.full_name


def test_set_tracking_policy_rpc(ours: DescriptorPool) -> None:
    service = ours.FindServiceByName(f"{ADMIN}.Api")
    method = service.methods_by_name["SetTrackingPolicy"]
    assert method.input_type.full_name == f"{ADMIN}.SetTrackingPolicyReq"
    assert method.output_type.full_name == f"{ADMIN}.SetTrackingPolicyRes"


@pytest.mark.parametrize(
    ("key", "expected"), ADDITIONS.items(), ids=[f"{m}#{n}" for m, n in ADDITIONS]
)
def test_addition(
    ours: DescriptorPool,
    key: tuple[str, int],
    expected: tuple[str, int, bool, str | None],
) -> None:
    message, number = key
    field = ours.FindMessageTypeByName(message).fields_by_number.get(number)
    assert field is not None, f"{message} has no field #{number}"
    got = (
        field.name,
        field.type,
        field.is_repeated,
        field.message_type.full_name if field.message_type else None,
    )
    assert got == expected


def test_keyword_named_fields_are_reachable(ours: DescriptorPool) -> None:
    """`from` is a Python keyword: it works through getattr/constructor kwargs."""
    email = message_class(ours, "pkg.kannon.mailer.types.EmailToSend")(**{"from": "a@b.test"})
    assert getattr(email, "from") == "a@b.test"

import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from kannon.pb.tracking.types import tracking_pb2 as _tracking_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetDomainsReq(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetDomainsResponse(_message.Message):
    __slots__ = ("domains",)
    DOMAINS_FIELD_NUMBER: _ClassVar[int]
    domains: _containers.RepeatedCompositeFieldContainer[Domain]
    def __init__(self, domains: _Optional[_Iterable[_Union[Domain, _Mapping]]] = ...) -> None: ...

class GetDomainReq(_message.Message):
    __slots__ = ("domain",)
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    domain: str
    def __init__(self, domain: _Optional[str] = ...) -> None: ...

class GetDomainRes(_message.Message):
    __slots__ = ("domain",)
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    domain: Domain
    def __init__(self, domain: _Optional[_Union[Domain, _Mapping]] = ...) -> None: ...

class CreateDomainRequest(_message.Message):
    __slots__ = ("domain", "ip_pool")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    IP_POOL_FIELD_NUMBER: _ClassVar[int]
    domain: str
    ip_pool: str
    def __init__(self, domain: _Optional[str] = ..., ip_pool: _Optional[str] = ...) -> None: ...

class Domain(_message.Message):
    __slots__ = ("domain", "dkim_pub_key", "tracking", "dkim_selector", "dns_records", "one_click_unsubscribe", "dkim_keys", "ip_pool")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    DKIM_PUB_KEY_FIELD_NUMBER: _ClassVar[int]
    TRACKING_FIELD_NUMBER: _ClassVar[int]
    DKIM_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    DNS_RECORDS_FIELD_NUMBER: _ClassVar[int]
    ONE_CLICK_UNSUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    DKIM_KEYS_FIELD_NUMBER: _ClassVar[int]
    IP_POOL_FIELD_NUMBER: _ClassVar[int]
    domain: str
    dkim_pub_key: str
    tracking: _tracking_pb2.TrackingPolicy
    dkim_selector: str
    dns_records: _containers.RepeatedCompositeFieldContainer[DnsRecord]
    one_click_unsubscribe: bool
    dkim_keys: _containers.RepeatedCompositeFieldContainer[DkimKey]
    ip_pool: str
    def __init__(self, domain: _Optional[str] = ..., dkim_pub_key: _Optional[str] = ..., tracking: _Optional[_Union[_tracking_pb2.TrackingPolicy, _Mapping]] = ..., dkim_selector: _Optional[str] = ..., dns_records: _Optional[_Iterable[_Union[DnsRecord, _Mapping]]] = ..., one_click_unsubscribe: _Optional[bool] = ..., dkim_keys: _Optional[_Iterable[_Union[DkimKey, _Mapping]]] = ..., ip_pool: _Optional[str] = ...) -> None: ...

class DkimKey(_message.Message):
    __slots__ = ("selector", "algorithm", "status", "public_key", "dns_record", "created_at", "confirmed_at", "retire_at")
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    DNS_RECORD_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CONFIRMED_AT_FIELD_NUMBER: _ClassVar[int]
    RETIRE_AT_FIELD_NUMBER: _ClassVar[int]
    selector: str
    algorithm: str
    status: str
    public_key: str
    dns_record: DnsRecord
    created_at: _timestamp_pb2.Timestamp
    confirmed_at: _timestamp_pb2.Timestamp
    retire_at: _timestamp_pb2.Timestamp
    def __init__(self, selector: _Optional[str] = ..., algorithm: _Optional[str] = ..., status: _Optional[str] = ..., public_key: _Optional[str] = ..., dns_record: _Optional[_Union[DnsRecord, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., confirmed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., retire_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SetTrackingPolicyReq(_message.Message):
    __slots__ = ("domain", "tracking")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    TRACKING_FIELD_NUMBER: _ClassVar[int]
    domain: str
    tracking: _tracking_pb2.TrackingPolicy
    def __init__(self, domain: _Optional[str] = ..., tracking: _Optional[_Union[_tracking_pb2.TrackingPolicy, _Mapping]] = ...) -> None: ...

class SetTrackingPolicyRes(_message.Message):
    __slots__ = ("domain",)
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    domain: Domain
    def __init__(self, domain: _Optional[_Union[Domain, _Mapping]] = ...) -> None: ...

class SetOneClickUnsubscribeReq(_message.Message):
    __slots__ = ("domain", "enabled")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    domain: str
    enabled: bool
    def __init__(self, domain: _Optional[str] = ..., enabled: _Optional[bool] = ...) -> None: ...

class SetOneClickUnsubscribeRes(_message.Message):
    __slots__ = ("domain",)
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    domain: Domain
    def __init__(self, domain: _Optional[_Union[Domain, _Mapping]] = ...) -> None: ...

class ListDkimKeysReq(_message.Message):
    __slots__ = ("domain", "include_retired")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_RETIRED_FIELD_NUMBER: _ClassVar[int]
    domain: str
    include_retired: bool
    def __init__(self, domain: _Optional[str] = ..., include_retired: _Optional[bool] = ...) -> None: ...

class ListDkimKeysRes(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[DkimKey]
    def __init__(self, keys: _Optional[_Iterable[_Union[DkimKey, _Mapping]]] = ...) -> None: ...

class RotateDkimKeysReq(_message.Message):
    __slots__ = ("domain",)
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    domain: str
    def __init__(self, domain: _Optional[str] = ...) -> None: ...

class RotateDkimKeysRes(_message.Message):
    __slots__ = ("keys", "dns_records")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    DNS_RECORDS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[DkimKey]
    dns_records: _containers.RepeatedCompositeFieldContainer[DnsRecord]
    def __init__(self, keys: _Optional[_Iterable[_Union[DkimKey, _Mapping]]] = ..., dns_records: _Optional[_Iterable[_Union[DnsRecord, _Mapping]]] = ...) -> None: ...

class ConfirmDkimKeysReq(_message.Message):
    __slots__ = ("domain", "selector")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    domain: str
    selector: str
    def __init__(self, domain: _Optional[str] = ..., selector: _Optional[str] = ...) -> None: ...

class ConfirmDkimKeysRes(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[DkimKey]
    def __init__(self, keys: _Optional[_Iterable[_Union[DkimKey, _Mapping]]] = ...) -> None: ...

class CheckDomainReq(_message.Message):
    __slots__ = ("domain",)
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    domain: str
    def __init__(self, domain: _Optional[str] = ...) -> None: ...

class CheckDomainRes(_message.Message):
    __slots__ = ("domain", "checks", "ok")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    domain: str
    checks: _containers.RepeatedCompositeFieldContainer[DnsCheck]
    ok: bool
    def __init__(self, domain: _Optional[str] = ..., checks: _Optional[_Iterable[_Union[DnsCheck, _Mapping]]] = ..., ok: _Optional[bool] = ...) -> None: ...

class DnsCheck(_message.Message):
    __slots__ = ("kind", "name", "status", "detail", "expected", "found")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    status: str
    detail: str
    expected: DnsRecord
    found: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ..., status: _Optional[str] = ..., detail: _Optional[str] = ..., expected: _Optional[_Union[DnsRecord, _Mapping]] = ..., found: _Optional[_Iterable[str]] = ...) -> None: ...

class DnsRecord(_message.Message):
    __slots__ = ("type", "name", "value", "purpose")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    type: str
    name: str
    value: str
    purpose: str
    def __init__(self, type: _Optional[str] = ..., name: _Optional[str] = ..., value: _Optional[str] = ..., purpose: _Optional[str] = ...) -> None: ...

class Template(_message.Message):
    __slots__ = ("template_id", "html", "title", "type")
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    HTML_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    template_id: str
    html: str
    title: str
    type: str
    def __init__(self, template_id: _Optional[str] = ..., html: _Optional[str] = ..., title: _Optional[str] = ..., type: _Optional[str] = ...) -> None: ...

class CreateTemplateReq(_message.Message):
    __slots__ = ("html", "title", "domain")
    HTML_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    html: str
    title: str
    domain: str
    def __init__(self, html: _Optional[str] = ..., title: _Optional[str] = ..., domain: _Optional[str] = ...) -> None: ...

class CreateTemplateRes(_message.Message):
    __slots__ = ("template",)
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    template: Template
    def __init__(self, template: _Optional[_Union[Template, _Mapping]] = ...) -> None: ...

class UpdateTemplateReq(_message.Message):
    __slots__ = ("template_id", "html", "title")
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    HTML_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    template_id: str
    html: str
    title: str
    def __init__(self, template_id: _Optional[str] = ..., html: _Optional[str] = ..., title: _Optional[str] = ...) -> None: ...

class UpdateTemplateRes(_message.Message):
    __slots__ = ("template",)
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    template: Template
    def __init__(self, template: _Optional[_Union[Template, _Mapping]] = ...) -> None: ...

class DeleteTemplateReq(_message.Message):
    __slots__ = ("template_id",)
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    template_id: str
    def __init__(self, template_id: _Optional[str] = ...) -> None: ...

class DeleteTemplateRes(_message.Message):
    __slots__ = ("template",)
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    template: Template
    def __init__(self, template: _Optional[_Union[Template, _Mapping]] = ...) -> None: ...

class GetTemplateReq(_message.Message):
    __slots__ = ("template_id",)
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    template_id: str
    def __init__(self, template_id: _Optional[str] = ...) -> None: ...

class GetTemplateRes(_message.Message):
    __slots__ = ("template",)
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    template: Template
    def __init__(self, template: _Optional[_Union[Template, _Mapping]] = ...) -> None: ...

class GetTemplatesReq(_message.Message):
    __slots__ = ("domain", "skip", "take")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    SKIP_FIELD_NUMBER: _ClassVar[int]
    TAKE_FIELD_NUMBER: _ClassVar[int]
    domain: str
    skip: int
    take: int
    def __init__(self, domain: _Optional[str] = ..., skip: _Optional[int] = ..., take: _Optional[int] = ...) -> None: ...

class GetTemplatesRes(_message.Message):
    __slots__ = ("templates", "total")
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    templates: _containers.RepeatedCompositeFieldContainer[Template]
    total: int
    def __init__(self, templates: _Optional[_Iterable[_Union[Template, _Mapping]]] = ..., total: _Optional[int] = ...) -> None: ...

class APIKey(_message.Message):
    __slots__ = ("id", "key", "name", "domain", "created_at", "expires_at", "is_active", "deactivated_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    IS_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    DEACTIVATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    key: str
    name: str
    domain: str
    created_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    is_active: bool
    deactivated_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., key: _Optional[str] = ..., name: _Optional[str] = ..., domain: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., is_active: _Optional[bool] = ..., deactivated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateAPIKeyRequest(_message.Message):
    __slots__ = ("domain", "name", "expires_at")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    domain: str
    name: str
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, domain: _Optional[str] = ..., name: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateAPIKeyResponse(_message.Message):
    __slots__ = ("api_key", "key")
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    api_key: APIKey
    key: str
    def __init__(self, api_key: _Optional[_Union[APIKey, _Mapping]] = ..., key: _Optional[str] = ...) -> None: ...

class ListAPIKeysRequest(_message.Message):
    __slots__ = ("domain", "only_active", "limit", "offset")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    ONLY_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    domain: str
    only_active: bool
    limit: int
    offset: int
    def __init__(self, domain: _Optional[str] = ..., only_active: _Optional[bool] = ..., limit: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class ListAPIKeysResponse(_message.Message):
    __slots__ = ("api_keys", "total")
    API_KEYS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    api_keys: _containers.RepeatedCompositeFieldContainer[APIKey]
    total: int
    def __init__(self, api_keys: _Optional[_Iterable[_Union[APIKey, _Mapping]]] = ..., total: _Optional[int] = ...) -> None: ...

class GetAPIKeyRequest(_message.Message):
    __slots__ = ("domain", "id")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    domain: str
    id: str
    def __init__(self, domain: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class GetAPIKeyResponse(_message.Message):
    __slots__ = ("api_key",)
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    api_key: APIKey
    def __init__(self, api_key: _Optional[_Union[APIKey, _Mapping]] = ...) -> None: ...

class DeactivateAPIKeyRequest(_message.Message):
    __slots__ = ("domain", "id")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    domain: str
    id: str
    def __init__(self, domain: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class DeactivateAPIKeyResponse(_message.Message):
    __slots__ = ("api_key",)
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    api_key: APIKey
    def __init__(self, api_key: _Optional[_Union[APIKey, _Mapping]] = ...) -> None: ...

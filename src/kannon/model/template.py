"""Templates: the HTML a Batch renders per Recipient, persistent (Admin API) or transient.

A *persistent* template (type ``template``) is created and edited by an operator and listed by
GetTemplates. A *transient* one (type ``transient``) is created by SendHTML, or by SendTemplate
when global fields change the HTML, and belongs to one Batch; listings never show it.

Pure: validation and the record type; storage is :mod:`kannon.db.templates`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from kannon.model.errors import InvalidArgument

TemplateType = Literal["template", "transient"]
PERSISTENT: TemplateType = "template"
TRANSIENT: TemplateType = "transient"

MAX_TITLE = 200  # templates.title is VARCHAR(200)
TEMPLATE_ID_PREFIX = "template_"


@dataclass(frozen=True)
class Template:
    template_id: str
    domain: str
    html: str
    title: str
    type: TemplateType
    created_at: datetime
    updated_at: datetime


def check_html(html: str, field: str = "html") -> None:
    if not html.strip():
        raise InvalidArgument(f"{field}: the template HTML is empty")
    # PostgreSQL text cannot hold NUL; refusing it here keeps it a caller error, not a fault.
    if "\x00" in html:
        raise InvalidArgument(f"{field}: contains a NUL character")


def check_title(title: str, field: str = "title") -> None:
    if len(title) > MAX_TITLE:
        raise InvalidArgument(f"{field}: longer than {MAX_TITLE} characters")
    if "\x00" in title:
        raise InvalidArgument(f"{field}: contains a NUL character")


def check_template_id(template_id: str, field: str = "template_id") -> str:
    value = template_id.strip()
    if not value:
        raise InvalidArgument(f"{field}: a template id is required")
    return value

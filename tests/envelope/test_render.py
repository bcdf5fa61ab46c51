"""Template field substitution: escaping, raw braces, literal specials, single pass."""

from __future__ import annotations

import pytest

from kannon.envelope.render import (
    apply_global_fields,
    placeholder_names,
    render_html,
    render_text,
)

HTML_CASES = [
    # (template, fields, expected)
    ("Hi {{ name }}!", {"name": "Bob"}, "Hi Bob!"),
    ("Hi {{name}}!", {"name": "Bob"}, "Hi Bob!"),
    ("Hi {{     name   }}!", {"name": "Bob"}, "Hi Bob!"),
    ("{{ a }}{{ b }}{{ a }}", {"a": "1", "b": "2"}, "121"),
    ("<p>{{ x }}</p>", {"x": "<b>&\"'"}, "<p>&lt;b&gt;&amp;&quot;&#x27;</p>"),
    (
        '<a title="{{ x }}">',
        {"x": '" onmouseover="alert(1)'},
        '<a title="&quot; onmouseover=&quot;alert(1)">',
    ),
    ("{{{ x }}}", {"x": "<b>bold</b>"}, "<b>bold</b>"),
    ("{{{x}}}", {"x": "<i>"}, "<i>"),
    ("a{{{ x }}}b{{ x }}c", {"x": "<i>"}, "a<i>b&lt;i&gt;c"),
    # replacement-template syntax of other engines means nothing here
    ("{{ v }}", {"v": "$1 ${x} $$ \\1 \\g<0>"}, "$1 ${x} $$ \\1 \\g&lt;0&gt;"),
    (
        "{{ a.b }} {{ c+ }} {{ (d) }} {{ $e }} {{ f\\1 }}",
        {"a.b": "1", "c+": "2", "(d)": "3", "$e": "4", "f\\1": "5"},
        "1 2 3 4 5",
    ),
    ("{{ a.b }}", {"axb": "no"}, "{{ a.b }}"),  # "." is not a wildcard
    # unknown placeholders stay literal, in both forms
    ("{{ missing }} {{{ gone }}}", {"name": "x"}, "{{ missing }} {{{ gone }}}"),
    ("{{ name }}", {}, "{{ name }}"),
    # single pass: values are never expanded again
    ("{{ a }}", {"a": "{{ b }}", "b": "B"}, "{{ b }}"),
    ("{{{ a }}}", {"a": "{{ b }}", "b": "B"}, "{{ b }}"),
    # surrounding braces survive
    ("{{{{ x }}}}", {"x": "X"}, "{X}"),
    ("{ {{ x }} }", {"x": "X"}, "{ X }"),
    # empty value is a value
    ("[{{ x }}]", {"x": ""}, "[]"),
    # names with inner spaces and unicode
    ("{{ first name }} {{ café }}", {"first name": "Ann", "café": "ok"}, "Ann ok"),
    ("no placeholders at all", {"x": "1"}, "no placeholders at all"),
    # only spaces are optional around names: other whitespace is part of the (unknown) name
    ("{{\tname }}", {"name": "x"}, "{{\tname }}"),
    ("{{ }}", {"name": "x"}, "{{ }}"),
]


@pytest.mark.parametrize(("template", "fields", "expected"), HTML_CASES)
def test_render_html(template: str, fields: dict[str, str], expected: str) -> None:
    assert render_html(template, fields) == expected


@pytest.mark.parametrize(("template", "fields", "expected"), HTML_CASES)
def test_apply_global_fields_follows_html_rules(
    template: str, fields: dict[str, str], expected: str
) -> None:
    assert apply_global_fields(template, fields) == expected


@pytest.mark.parametrize(
    ("template", "fields", "expected"),
    [
        (
            "Order {{ id }} for {{ name }}",
            {"id": "#1", "name": "Tom & <Jerry>"},
            "Order #1 for Tom & <Jerry>",
        ),
        ("{{{ name }}}", {"name": "<raw>"}, "<raw>"),
        ("{{ v }}", {"v": "$1\\1"}, "$1\\1"),
        ("{{ a }}", {"a": "{{ b }}", "b": "x"}, "{{ b }}"),
        ("{{ unknown }}", {"a": "1"}, "{{ unknown }}"),
    ],
)
def test_render_text_inserts_raw(template: str, fields: dict[str, str], expected: str) -> None:
    assert render_text(template, fields) == expected


def test_global_then_recipient_fields() -> None:
    template = apply_global_fields("<p>{{ company }} for {{ name }}</p>", {"company": "A&B"})
    assert template == "<p>A&amp;B for {{ name }}</p>"
    assert render_html(template, {"name": "Zoë"}) == "<p>A&amp;B for Zoë</p>"


def test_placeholder_names() -> None:
    assert placeholder_names("{{ a }} {{{b}}} {{ c d }} {x}") == {"a", "b", "c d"}


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "hostile",
    [
        "{{" + " " * 200_000,  # minutes of backtracking with " *" around a lazy name group
        "{{{" + " " * 200_000,
        "{{ " + "a " * 100_000,
        "{{" * 100_000,
        ("{{ " + " " * 50 + "}") * 4000,
    ],
)
def test_hostile_templates_are_linear(hostile: str) -> None:
    # Linear: milliseconds. The regression (super-linear backtracking): caught by the timeout.
    assert render_html(hostile, {"a": "x"}) == hostile

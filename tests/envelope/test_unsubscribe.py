"""RFC 8058 URL templates and headers (pure)."""

from __future__ import annotations

import pytest

from kannon.envelope.unsubscribe import check_url_template, headers, render_url


def test_template_must_be_https_with_a_fixed_host() -> None:
    assert check_url_template("https://l.example/u?e={{ email }}&id={{id}}") == {"email", "id"}
    for bad, why in (
        ("http://l.example/u", "https"),
        ("https://{{ host }}/u", "host"),
        ("https://l.example/u?x=a b", "whitespace"),
        ("", "empty"),
    ):
        with pytest.raises(ValueError, match=why):
            check_url_template(bad)


def test_values_are_percent_encoded_and_email_defaults_to_the_recipient() -> None:
    url = render_url("https://l.example/u?e={{ email }}&l={{ l }}", {"l": "a&b=c"}, "a+b@x.example")
    assert url == "https://l.example/u?e=a%2Bb%40x.example&l=a%26b%3Dc"
    with pytest.raises(ValueError, match="no value"):
        render_url("https://l.example/u?l={{ l }}", {}, "a@x.example")
    assert headers(url) == [
        ("List-Unsubscribe", f" <{url}>"),
        ("List-Unsubscribe-Post", " List-Unsubscribe=One-Click"),
    ]

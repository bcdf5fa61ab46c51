"""The one exception configuration problems surface as (kept apart so every module can raise it)."""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration problem, reported on ONE line naming the key, its env var/flag and value.

    ``key`` is the dotted key path when the problem is about a single key (None for file-level
    problems such as an unreadable or malformed config file).
    """

    def __init__(self, message: str, *, key: str | None = None) -> None:
        # Operators read this in a crash-looping pod's log; a multi-line message gets split
        # across log records, so line breaks are escaped rather than kept.
        one_line = message.replace("\r", "\\r").replace("\n", "\\n")
        super().__init__(one_line)
        self.key = key

"""Helpers for the configuration tests: load Settings from a YAML text, an environment and argv.

Every load runs with HOME pointing at a per-test directory, so the default ~/.kannon.yaml is the
test's own file (or absent) and never the developer's. A module of its own rather than
conftest.py: tests import Loader, and tests/conftest.py already owns the module name "conftest".
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kannon.config import Settings, add_cli_flags, load_settings


def parse_argv(argv: Sequence[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="kannon", exit_on_error=False)
    add_cli_flags(parser)
    return vars(parser.parse_args(list(argv)))


class Loader:
    def __init__(self, home: Path) -> None:
        self.home = home

    @property
    def default_file(self) -> Path:
        return self.home / ".kannon.yaml"

    def __call__(
        self,
        yaml_text: str | None = None,
        env: Mapping[str, str] | None = None,
        argv: Sequence[str] = (),
        *,
        config_path: str | None = None,
    ) -> Settings:
        if yaml_text is not None:
            self.default_file.write_text(yaml_text, encoding="utf-8")
        environ = {"HOME": str(self.home), **(env or {})}
        return load_settings(parse_argv(argv), environ, config_path=config_path)

"""The README's other commands stay true: every `make` target it names exists and dry-runs, every
file or folder it points to exists, the deployment commands name real files, and the config file
`make run` uses loads cleanly. (The API walkthrough itself runs in test_readme.py.)"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

from kannon.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_every_make_target_in_the_readme_exists() -> None:
    targets = sorted(set(re.findall(r"\bmake ([a-z][a-z-]*)", README)))
    assert {"run", "test", "lint", "generate", "bench", "install", "images"} <= set(targets)
    for target in targets:
        result = subprocess.run(
            ["make", "-n", target], cwd=ROOT, capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, f"make {target}: {result.stderr}"


def test_make_run_starts_standalone_with_a_config_that_loads() -> None:
    recipe = subprocess.run(
        ["make", "-n", "run"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    line = next(line for line in recipe.splitlines() if "kannon standalone" in line)
    config = shlex.split(line)[shlex.split(line).index("--config") + 1]
    settings = load_settings({}, {}, config_path=str(ROOT / config))
    assert settings.sender.demo_sender
    assert settings.api.port == 50051 and settings.tracker.port == 8080


def test_paths_the_readme_points_to_exist() -> None:
    linked = re.findall(r"\]\(([^)#]+?)\)", README)
    backticked = re.findall(
        r"`((?:examples|k8s|services|docs|bench|scripts|proto|src|tests)/"
        r"[\w./-]*)`",
        README,
    )
    paths = [p for p in [*linked, *backticked] if not p.startswith("http")]
    assert paths
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert missing == [], missing


def test_deployment_commands_name_real_files() -> None:
    compose = re.search(r"docker-compose -f ([^\s`]+) up", README)
    assert compose and (ROOT / compose.group(1)).is_file()
    kustomize = re.search(r"kubectl apply -k ([^\s`]+)", README)
    assert kustomize and (ROOT / kustomize.group(1) / "kustomization.yaml").is_file()

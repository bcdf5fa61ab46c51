"""Deployment artefacts: the container images (services/Dockerfile), the docker-compose example and
the Kubernetes manifests (k8s/), checked offline — there is no Docker engine or cluster here.

Two kinds of checks:
- the linters/validators of each format (hadolint, check-jsonschema's compose schema,
  kubernetes-validate --strict), which must exit 0; a negative control shows each one can fail;
- consistency with the program: every Component has an image target, a compose service and a
  k8s Deployment; the argv each of them ends up running (image ENTRYPOINT + compose command / pod
  args + the shipped kannon.yaml + env) selects exactly that Component through the real config
  loader and gives it every setting it needs; ports, probes and secrets line up across files;
  the images' HEALTHCHECK command is run against a real /healthz.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

import kannon
from kannon.config import COMPONENTS, add_cli_flags, iter_keys, load_settings
from kannon.config.model import Settings
from kannon.envelope.bounce import make_bounce_address
from kannon.runtime.health import HealthRegistry, HealthServer

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DOCKERFILE = ROOT / "services" / "Dockerfile"
COMPOSE_DIR = ROOT / "examples" / "docker-compose"
COMPOSE = COMPOSE_DIR / "docker-compose.yaml"
COMPOSE_CONFIG = COMPOSE_DIR / "kannon.yaml"
K8S = ROOT / "k8s"
STANDALONE = K8S / "overlays" / "standalone"
IP_POOLS = K8S / "overlays" / "ip-pools"
CONFIG_IN_CONTAINER = "/etc/kannon/kannon.yaml"

# What each Component needs (the product's contract; the sender never touches the database).
NEEDS_DB = {"api", "validator", "dispatcher", "tracker", "stats", "webhooks"}
NEEDS_NATS = {"validator", "dispatcher", "sender", "smtp", "tracker", "stats", "webhooks"}
NEEDS_SECRET_KEY = {"dispatcher", "smtp"}
# Port each Component serves besides health.port, as published: (container port, public port).
PUBLISHED = {"api": (50051, 50051), "tracker": (8080, 8080), "smtp": (2525, 25)}
# Further ports: the api's Connect/gRPC-Web listener (ADR 0030).
ALSO_PUBLISHED = {"api": {(50052, 50052)}}
HEALTH_PORT = 9090
IMAGE_TARGETS = ("base", *COMPONENTS, "migrate")
# Secret `kannon`: env var -> key.
SECRET_KEYS = {
    "K_DATABASE_URL": "database-url",
    "K_API_ADMIN_TOKEN": "admin-token",
    "K_SECRET_KEY": "secret-key",
}
KNOWN_KEYS = {info.key for info in iter_keys()}
KNOWN_ENV = {info.env for info in iter_keys()}


def _run(tool: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    exe = BIN / tool
    assert exe.exists(), f"{tool} is not installed next to {sys.executable} (pip install -e .[dev])"
    return subprocess.run(
        [str(exe), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )


def _assert_tool_ok(result: subprocess.CompletedProcess[str]) -> None:
    output = f"{result.stdout}\n{result.stderr}"
    assert result.returncode == 0, f"{' '.join(result.args)} failed:\n{output}"


def _load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


# ---------------------------------------------------------------------------------------------
# Dockerfile model: stages with their instructions, resolved through the FROM chain.


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def _logical_lines(text: str) -> Iterator[str]:
    buffer = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not buffer):
            continue  # comments (also between continuation lines) and blank lines
        if line.endswith("\\"):
            buffer += line[:-1].strip() + " "
            continue
        yield buffer + line
        buffer = ""
    assert not buffer, "Dockerfile ends inside a line continuation"


def parse_dockerfile(path: Path) -> dict[str, Stage]:
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in _logical_lines(path.read_text(encoding="utf-8")):
        instruction, _, args = line.partition(" ")
        instruction, args = instruction.upper(), args.strip()
        if instruction == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", args, re.IGNORECASE)
            assert match, f"unparsable FROM: {line}"
            current = Stage(name=match[2] or match[1], base=match[1])
            stages[current.name] = current
        elif current is not None:
            current.instructions.append((instruction, args))
    return stages


def _chain(stages: Mapping[str, Stage], name: str) -> list[Stage]:
    """The stage and its ancestors among the file's stages, nearest first."""
    chain = [stages[name]]
    while chain[-1].base in stages:
        chain.append(stages[chain[-1].base])
    return chain


def effective(stages: Mapping[str, Stage], name: str, instruction: str) -> str | None:
    """The value an image built from `name` ends up with (last one wins, inherited via FROM)."""
    for stage in _chain(stages, name):
        values = [args for instr, args in stage.instructions if instr == instruction]
        if values:
            return values[-1]
    return None


def exposed(stages: Mapping[str, Stage], name: str) -> set[int]:
    ports: set[int] = set()
    for stage in _chain(stages, name):
        for instr, args in stage.instructions:
            if instr == "EXPOSE":
                ports.update(int(port.split("/")[0]) for port in args.split())
    return ports


def image_env(stages: Mapping[str, Stage], name: str) -> dict[str, str]:
    """ENV of the image (only the `ENV k=v ...` form is used in services/Dockerfile)."""
    env: dict[str, str] = {}
    for stage in reversed(_chain(stages, name)):
        for instr, args in stage.instructions:
            if instr == "ENV":
                for token in re.findall(r'(\w+)=("[^"]*"|\S+)', args):
                    env[token[0]] = token[1].strip('"')
    return env


def exec_form(value: str | None) -> list[str]:
    assert value is not None
    parsed = json.loads(value)
    assert isinstance(parsed, list), f"not exec form: {value}"
    return [str(item) for item in parsed]


def healthcheck_argv(stages: Mapping[str, Stage], name: str) -> list[str] | None:
    value = effective(stages, name, "HEALTHCHECK")
    if value is None or value.strip().upper() == "NONE":
        return None
    _, _, command = value.partition("CMD ")
    return exec_form(command)


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return parse_dockerfile(DOCKERFILE)


# ---------------------------------------------------------------------------------------------
# Settings as a container would load them.


def flatten_keys(document: Mapping[str, Any], prefix: str = "") -> set[str]:
    """Dotted key paths of a kannon.yaml document; unknown sections come back as their path."""
    keys: set[str] = set()
    for name, value in document.items():
        path = f"{prefix}{name}"
        if path not in KNOWN_KEYS and isinstance(value, Mapping):
            keys |= flatten_keys(value, f"{path}.")
        else:
            keys.add(path)
    return keys


def container_settings(argv: list[str], config: Path, environ: Mapping[str, str]) -> Settings:
    """Settings of `kannon <argv>` with the config file mounted from `config` (argv[0] = kannon)."""
    parser = argparse.ArgumentParser()
    add_cli_flags(parser)
    namespace = parser.parse_args(argv[1:])
    assert namespace.config == CONFIG_IN_CONTAINER, f"{argv} does not read the mounted config"
    return load_settings(vars(namespace), environ, config_path=str(config))


def assert_has_what_it_needs(component: str, settings: Settings, where: str) -> None:
    if component in NEEDS_DB:
        assert settings.database_url, f"{where}: {component} gets no database_url"
    if component in NEEDS_NATS:
        assert settings.nats_url, f"{where}: {component} gets no nats_url"
    if component in NEEDS_SECRET_KEY:
        assert settings.secret_key, f"{where}: {component} gets no secret_key"
    if component == "api":
        assert settings.api.admin_token, f"{where}: the API gets no admin token"
    if component == "sender":
        assert settings.sender.demo_sender or settings.sender.hostname, where


# =============================================================================================
# Linters and validators


def test_hadolint_passes_on_every_dockerfile() -> None:
    dockerfiles = sorted(
        path
        for path in (ROOT / "services").rglob("*")
        if path.is_file() and (path.name == "Dockerfile" or "Dockerfile" in path.name.split("."))
    )
    assert DOCKERFILE in dockerfiles
    for dockerfile in dockerfiles:
        _assert_tool_ok(_run("hadolint", "--failure-threshold", "style", dockerfile))


def test_compose_file_validates_against_the_compose_spec() -> None:
    _assert_tool_ok(_run("check-jsonschema", "--builtin-schema", "vendor.compose-spec", COMPOSE))


def _manifests() -> list[Path]:
    """Every Kubernetes manifest under k8s/ (kustomizations and kannon.yaml files are not)."""
    found = []
    for path in sorted(K8S.rglob("*.yaml")):
        documents = _load_all(path)
        manifest = documents and all("apiVersion" in d and "kind" in d for d in documents)
        if manifest and documents[0]["kind"] != "Kustomization":
            found.append(path)
    return found


@pytest.mark.parametrize("version", ["1.27.0", "default"])
def test_every_manifest_validates_strictly(version: str) -> None:
    manifests = _manifests()
    assert {path.name for path in manifests} >= {
        "namespace.yaml",
        "configmap.yaml",
        "migrate-job.yaml",
        *(f"{component}.yaml" for component in COMPONENTS),
        "standalone.yaml",
    }
    flags = [] if version == "default" else ["-k", version]
    result = _run("kubernetes-validate", "--strict", *flags, *manifests)
    _assert_tool_ok(result)
    # A resource with no schema is only a warning: it would be silently unvalidated.
    assert "WARN" not in result.stdout + result.stderr, result.stdout + result.stderr


@pytest.mark.parametrize(
    "path", [K8S, STANDALONE, IP_POOLS], ids=["fleet", "standalone", "ip-pools"]
)
def test_kustomizations_render_to_valid_manifests(path: Path, tmp_path: Path) -> None:
    # What holds without kustomize: every listed file exists, generated config files load as
    # Kannon settings, and every image the kustomization retags is used by some manifest.
    kustomization = yaml.safe_load((path / "kustomization.yaml").read_text(encoding="utf-8"))
    manifests = "".join(
        (path / name).read_text(encoding="utf-8") for name in kustomization["resources"]
    )
    for generator in kustomization.get("configMapGenerator", []):
        for name in generator["files"]:
            load_settings({}, {}, config_path=str(path / name))
    for image in kustomization.get("images", []):
        assert f"image: {image['name']}" in manifests, image["name"]
    # kubectl is not part of Kannon's install (it is on the machines this was written on):
    # where it exists, also render the kustomization and validate the result strictly.
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return
    rendered = subprocess.run(
        [kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert rendered.returncode == 0, rendered.stderr
    out = tmp_path / "rendered.yaml"
    out.write_text(rendered.stdout)
    _assert_tool_ok(_run("kubernetes-validate", "--strict", out))


@pytest.mark.parametrize(
    ("tool", "filename", "content"),
    [
        ("hadolint", "Dockerfile", "FROM python\nRUN cd /tmp && pip install requests\n"),
        ("check-jsonschema", "compose.yaml", "services:\n  api:\n    image: x\n    cmd: [a]\n"),
        (
            "kubernetes-validate",
            "deployment.yaml",
            (K8S / "stats.yaml")
            .read_text(encoding="utf-8")
            .replace("readOnlyRootFilesystem:", "readOnlyRootFileSystem:"),
        ),
    ],
    ids=["hadolint", "check-jsonschema", "kubernetes-validate"],
)
def test_the_validators_do_report_problems(
    tool: str, filename: str, content: str, tmp_path: Path
) -> None:
    """Negative control: each tool, called as above, fails on a broken file."""
    path = tmp_path / filename
    path.write_text(content)
    args: dict[str, list[str | Path]] = {
        "hadolint": ["--failure-threshold", "style", path],
        "check-jsonschema": ["--builtin-schema", "vendor.compose-spec", path],
        "kubernetes-validate": ["--strict", path],
    }
    result = _run(tool, *args[tool])
    assert result.returncode != 0, result.stdout + result.stderr


# =============================================================================================
# Images


def test_the_dockerfile_has_the_targets_make_images_builds(stages: dict[str, Stage]) -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    match = re.search(r"for c in ([\w ]+); do\s*\\\s*docker build -f services/Dockerfile", makefile)
    assert match, "Makefile `images` no longer builds from services/Dockerfile"
    assert set(match[1].split()) == set(IMAGE_TARGETS)
    assert set(IMAGE_TARGETS) <= set(stages)


def test_the_base_is_slim_non_root_with_ca_certificates_and_no_build_tools(
    stages: dict[str, Stage],
) -> None:
    base = stages["base"]
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", base.base), base.base
    runs = " ".join(args for instr, args in base.instructions if instr == "RUN")
    assert "ca-certificates" in runs
    for tool in ("gcc", "build-essential", "make ", "git", "curl", "pip install"):
        assert tool not in runs, f"{tool} in the runtime stage"
    copies = [args for instr, args in base.instructions if instr == "COPY"]
    assert copies == ["--from=builder /opt/kannon /opt/kannon"], "the runtime copies only the venv"
    user = effective(stages, "base", "USER")
    assert user is not None and user.split(":")[0].isdigit() and user.split(":")[0] != "0", user
    for target in IMAGE_TARGETS:
        assert stages["base"] in _chain(stages, target), f"{target} is not built on base"
        assert effective(stages, target, "USER") == user, f"{target} changes the user"


def test_image_labels_carry_the_package_version(stages: dict[str, Stage]) -> None:
    args = [value for instr, value in stages["base"].instructions if instr == "ARG"]
    assert f"VERSION={kannon.__version__}" in args
    labels = " ".join(value for instr, value in stages["base"].instructions if instr == "LABEL")
    for label in ("title", "version", "revision", "created", "source", "licenses"):
        assert f"org.opencontainers.image.{label}=" in labels


@pytest.mark.parametrize("component", COMPONENTS)
def test_each_component_image_runs_only_that_component(
    component: str, stages: dict[str, Stage]
) -> None:
    entrypoint = exec_form(effective(stages, component, "ENTRYPOINT"))
    assert Path(entrypoint[0]).name == "kannon"
    assert entrypoint[1:] == [f"--run-{component}"], entrypoint
    assert exec_form(effective(stages, component, "CMD")) == ["--config", CONFIG_IN_CONTAINER]
    ports = {HEALTH_PORT} | ({PUBLISHED[component][0]} if component in PUBLISHED else set())
    ports |= {inside for inside, _ in ALSO_PUBLISHED.get(component, set())}
    assert exposed(stages, component) == ports
    title = [v for i, v in stages[component].instructions if i == "LABEL"]
    assert any(f'org.opencontainers.image.title="kannon-{component}"' in v for v in title)
    probe = healthcheck_argv(stages, component)
    assert probe is not None and probe[0] == "python" and "/healthz" in probe[-1], probe


def test_the_migrate_image_migrates_and_has_no_healthcheck(stages: dict[str, Stage]) -> None:
    entrypoint = exec_form(effective(stages, "migrate", "ENTRYPOINT"))
    assert entrypoint[1:] == ["migrate"]
    assert exec_form(effective(stages, "migrate", "CMD")) == ["--config", CONFIG_IN_CONTAINER]
    assert healthcheck_argv(stages, "migrate") is None


def test_image_env_sets_only_valid_settings(stages: dict[str, Stage]) -> None:
    env = {k: v for k, v in image_env(stages, "base").items() if k.startswith("K_")}
    assert env.keys() <= KNOWN_ENV
    settings = load_settings({}, env, config_path=str(COMPOSE_CONFIG))
    # Unprivileged: the inbound SMTP server cannot listen on 25 as UID 10001.
    assert settings.smtp.address == f":{PUBLISHED['smtp'][0]}"


async def _probe_exit_code(argv: list[str], env: Mapping[str, str]) -> int:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *argv[1:],
        env={**os.environ, **env},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await asyncio.wait_for(process.wait(), 30)


async def test_the_healthchecks_pass_on_a_healthy_process_and_fail_otherwise(
    stages: dict[str, Stage],
) -> None:
    """The image's HEALTHCHECK and compose's, run against a real /healthz (200, then 503)."""
    registry = HealthRegistry()
    state = {"ok": True}

    async def check() -> None:
        if not state["ok"]:
            raise RuntimeError("database unreachable")

    registry.add_check("db", check)
    server = HealthServer(registry, "127.0.0.1", 0)
    await server.start()
    try:
        image_probe = healthcheck_argv(stages, "api")
        assert image_probe is not None and image_probe[0] == "python"
        compose_test = yaml.safe_load(COMPOSE.read_text())["services"]["api"]["healthcheck"]["test"]
        assert compose_test[0] == "CMD" and compose_test[1] == "python"
        assert f"127.0.0.1:{HEALTH_PORT}/healthz" in compose_test[-1]
        compose_probe = [
            *compose_test[1:-1],
            compose_test[-1].replace(f":{HEALTH_PORT}/", f":{server.port}/"),
        ]
        env = {"K_HEALTH_PORT": str(server.port)}
        assert await _probe_exit_code(image_probe, env) == 0
        assert await _probe_exit_code(compose_probe, env) == 0
        state["ok"] = False
        assert await _probe_exit_code(image_probe, env) != 0
        assert await _probe_exit_code(compose_probe, env) != 0
    finally:
        await server.close()


# --- build context ---------------------------------------------------------------------------


def _dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    patterns = []
    for raw in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        glob = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(glob):
            if glob.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif glob.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif glob[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif glob[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif glob[i] == "[":
                end = glob.index("]", i)
                regex, i = regex + glob[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(glob[i]), i + 1
        patterns.append((negated, re.compile(regex)))
    return patterns


def _ignored(relative: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for negated, pattern in patterns:
        if any(pattern.fullmatch(candidate) for candidate in candidates):
            ignored = not negated
    return ignored


def _builder_copy_sources(stages: Mapping[str, Stage]) -> list[str]:
    sources = []
    for instr, args in stages["builder"].instructions:
        if instr == "COPY":
            assert not args.startswith("--from"), args
            sources += args.split()[:-1]
    return sources


def _context_files(stages: Mapping[str, Stage]) -> list[Path]:
    """Files of the build context that the builder stage copies."""
    patterns = _dockerignore_patterns()
    files = []
    for source in _builder_copy_sources(stages):
        matches = sorted(ROOT.glob(source))
        assert matches or "*" in source, f"COPY source {source} does not exist"
        for match in matches:
            for path in [match] if match.is_file() else sorted(match.rglob("*")):
                relative = path.relative_to(ROOT).as_posix()
                if path.is_file() and not _ignored(relative, patterns):
                    files.append(path)
    return files


def test_the_build_context_holds_the_sources_and_nothing_private(
    stages: dict[str, Stage],
) -> None:
    patterns = _dockerignore_patterns()
    files = {path.relative_to(ROOT).as_posix() for path in _context_files(stages)}
    assert "pyproject.toml" in files
    assert "src/kannon/cli.py" in files
    migrations = sorted((ROOT / "src" / "kannon" / "db" / "migrations").glob("*.sql"))
    assert migrations and {m.relative_to(ROOT).as_posix() for m in migrations} <= files
    for private in (".venv/bin/python", ".git/config", ".kannon-data/secret_key", "tests/x.py"):
        assert _ignored(private, patterns), f"{private} would be sent to the Docker daemon"
    assert not any("__pycache__" in name for name in files)


def test_the_copied_sources_build_the_package_with_its_migrations(
    stages: dict[str, Stage], tmp_path: Path
) -> None:
    """What the builder's `pip install .` gets: a wheel with the SQL and the console script."""
    pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools")
    context = tmp_path / "context"
    for path in _context_files(stages):
        target = context / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(context)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "dist").glob("kannon-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    for migration in (ROOT / "src" / "kannon" / "db" / "migrations").glob("*.sql"):
        assert f"kannon/db/migrations/{migration.name}" in names
    assert re.search(r"^kannon = kannon\.cli:main$", scripts, re.MULTILINE), scripts


# =============================================================================================
# docker-compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def _published(port: str) -> tuple[int, int]:
    """`"${KANNON_SMTP_PORT:-25}:2525"` -> (2525, 25): container port, default host port."""
    resolved = re.sub(r"\$\{\w+:-(\d+)\}", r"\1", port)
    host, container = resolved.rsplit(":", 1)
    return int(container), int(host.rsplit(":", 1)[-1])


def _depends(service: Mapping[str, Any]) -> dict[str, str]:
    return {name: spec["condition"] for name, spec in service.get("depends_on", {}).items()}


def test_compose_kannon_yaml_has_only_known_keys_and_loads() -> None:
    document = yaml.safe_load(COMPOSE_CONFIG.read_text(encoding="utf-8"))
    keys = flatten_keys(document)
    assert keys <= KNOWN_KEYS, f"unknown keys: {sorted(keys - KNOWN_KEYS)}"
    assert not {key for key in keys if key.startswith("run-")}, "services select their Component"
    settings = load_settings({}, {}, config_path=str(COMPOSE_CONFIG))
    assert settings.sender.demo_sender is True
    assert settings.api.admin_token
    assert settings.api.port == PUBLISHED["api"][0]
    assert settings.tracker.port == PUBLISHED["tracker"][0]
    assert settings.health.port == HEALTH_PORT
    # The dispatcher and smtp refuse to boot with a bounce secret shorter than 16 bytes.
    assert settings.secret_key is not None
    make_bounce_address("msg_x@demo.example", "a@b.example", settings.secret_key.encode())


def test_compose_runs_postgres_nats_and_a_one_shot_migration(compose: dict[str, Any]) -> None:
    services = compose["services"]
    settings = load_settings({}, {}, config_path=str(COMPOSE_CONFIG))
    assert settings.database_url and settings.nats_url
    assert f"@postgres:{5432}/" in settings.database_url
    assert settings.nats_url == "nats://nats:4222"
    assert "postgres" in services["postgres"]["image"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    nats = services["nats"]
    assert {"--jetstream", "-js"} & set(nats["command"]), "NATS without JetStream"
    assert "js-enabled-only=true" in " ".join(nats["healthcheck"]["test"])
    migrate = services["migrate"]
    assert migrate["build"]["target"] == "migrate"
    assert migrate["restart"] == "no"
    assert _depends(migrate) == {"postgres": "service_healthy"}


@pytest.mark.parametrize("component", COMPONENTS)
def test_each_compose_service_runs_its_component(
    component: str, compose: dict[str, Any], stages: dict[str, Stage]
) -> None:
    service = compose["services"][component]
    build = service["build"]
    assert (COMPOSE_DIR / build["context"]).resolve() == ROOT
    assert build["dockerfile"] == "services/Dockerfile" and build["target"] == component
    assert service["image"] == f"kannon-{component}:dev", "same tag as `make images`"
    assert "entrypoint" not in service, "the image's entrypoint selects the Component"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
    assert mounts[CONFIG_IN_CONTAINER] == "./kannon.yaml"

    argv = exec_form(effective(stages, component, "ENTRYPOINT")) + service["command"]
    env = {k: v for k, v in image_env(stages, component).items() if k.startswith("K_")}
    env.update(service.get("environment") or {})
    settings = container_settings(argv, COMPOSE_CONFIG, env)
    assert settings.selected_components() == [component], argv
    assert_has_what_it_needs(component, settings, f"compose service {component}")

    assert service["healthcheck"]["test"][0] == "CMD"
    assert f":{settings.health.port}/healthz" in service["healthcheck"]["test"][-1]
    depends = _depends(service)
    if component in NEEDS_DB:
        assert depends["postgres"] == "service_healthy"
        assert depends["migrate"] == "service_completed_successfully"
    else:
        assert "postgres" not in depends and "migrate" not in depends, "needs no database"
    if component in NEEDS_NATS:
        assert depends["nats"] == "service_healthy"
    published = {_published(port) for port in service.get("ports", [])}
    assert published == ({PUBLISHED[component]} if component in PUBLISHED else set()) | (
        ALSO_PUBLISHED.get(component, set())
    )


def test_compose_has_no_stray_kannon_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"postgres", "nats", "migrate", *COMPONENTS}


# =============================================================================================
# Kubernetes


@pytest.fixture(scope="module")
def fleet() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> resource, for the manifests the fleet's kustomization lists."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    resources: dict[tuple[str, str], dict[str, Any]] = {}
    for name in kustomization["resources"]:
        for doc in _load_all(K8S / name):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in resources, f"{key} defined twice"
            resources[key] = doc
    return resources


def _config_from_configmap(configmap: Mapping[str, Any], tmp_path: Path) -> Path:
    path = tmp_path / "kannon.yaml"
    path.write_text(configmap["data"]["kannon.yaml"])
    return path


def _pod_environ(container: Mapping[str, Any]) -> dict[str, str]:
    """The container's env with a placeholder for each secretKeyRef; also checks the refs."""
    environ: dict[str, str] = {}
    for var in container.get("env", []):
        if "valueFrom" in var:
            ref = var["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "kannon" and ref["key"] == SECRET_KEYS[var["name"]], var
            environ[var["name"]] = (
                "postgresql://u:p@db/kannon" if "DATABASE" in var["name"] else "x"
            )
        else:
            assert var["name"] not in SECRET_KEYS, f"{var['name']} must come from the Secret"
            environ[var["name"]] = str(var["value"])
    assert environ.keys() <= KNOWN_ENV, sorted(environ.keys() - KNOWN_ENV)
    return environ


def _assert_locked_down(pod: Mapping[str, Any], container: Mapping[str, Any], uid: int) -> None:
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"].get("runAsUser", uid) == uid
    assert pod.get("automountServiceAccountToken") is False
    ctx = container["securityContext"]
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["capabilities"]["drop"] == ["ALL"]
    assert not ctx.get("privileged", False)
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= container["resources"][kind].keys(), kind
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/etc/kannon"]]["configMap"]["name"].startswith("kannon")


def _image_repository(image: str) -> str:
    name = image.rsplit("/", 1)[-1]
    return re.split(r"[:@]", name, maxsplit=1)[0]


def test_the_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    on_disk = {p.name for p in _manifests() if p.parent == K8S}
    assert set(kustomization["resources"]) == on_disk - {"secret.example.yaml"}
    assert {entry["name"] for entry in kustomization["images"]} == {
        f"kannon-{target}" for target in IMAGE_TARGETS if target != "base"
    }


def test_the_example_secret_has_every_referenced_key() -> None:
    (secret,) = _load_all(K8S / "secret.example.yaml")
    assert secret["metadata"]["name"] == "kannon"
    assert set(secret["stringData"]) == set(SECRET_KEYS.values())


def test_the_configmap_kannon_yaml_has_only_known_keys_and_no_secrets(
    fleet: dict[tuple[str, str], dict[str, Any]], tmp_path: Path
) -> None:
    configmap = fleet[("ConfigMap", "kannon-config")]
    for path in (_config_from_configmap(configmap, tmp_path), STANDALONE / "kannon.yaml"):
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        keys = flatten_keys(document)
        assert keys <= KNOWN_KEYS, f"{path.name}: unknown keys {sorted(keys - KNOWN_KEYS)}"
        assert not {k for k in keys if k.startswith("run-")}, "Deployments select the Component"
        assert not keys & {"database_url", "api.admin_token", "secret_key"}, (
            "secrets in a ConfigMap"
        )
        settings = load_settings({}, {}, config_path=str(path))
        assert settings.health.port == HEALTH_PORT
        assert settings.api.port == PUBLISHED["api"][0]
        assert settings.tracker.port == PUBLISHED["tracker"][0]


@pytest.mark.parametrize("component", COMPONENTS)
def test_each_component_has_a_locked_down_deployment_running_it(
    component: str,
    fleet: dict[tuple[str, str], dict[str, Any]],
    stages: dict[str, Stage],
    tmp_path: Path,
) -> None:
    deployment = fleet[("Deployment", f"kannon-{component}")]
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= (
        deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    (container,) = pod["containers"]
    assert _image_repository(container["image"]) == f"kannon-{component}"
    assert "command" not in container, "the image's entrypoint selects the Component"
    uid = int((effective(stages, component, "USER") or "0").split(":")[0])
    _assert_locked_down(pod, container, uid)

    config = _config_from_configmap(fleet[("ConfigMap", "kannon-config")], tmp_path)
    argv = exec_form(effective(stages, component, "ENTRYPOINT")) + container["args"]
    env = {k: v for k, v in image_env(stages, component).items() if k.startswith("K_")}
    env.update(_pod_environ(container))
    settings = container_settings(argv, config, env)
    assert settings.selected_components() == [component], argv
    assert_has_what_it_needs(component, settings, f"Deployment kannon-{component}")
    if component not in NEEDS_DB:
        assert settings.database_url is None, f"{component} must not get the database URL"
    if component != "api":
        assert settings.api.admin_token is None, f"{component} must not get the admin token"

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["health"] == settings.health.port == HEALTH_PORT
    served = {PUBLISHED[component][0]} if component in PUBLISHED else set()
    served |= {inside for inside, _ in ALSO_PUBLISHED.get(component, set())}
    assert set(ports.values()) == {HEALTH_PORT} | served
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        spec = container[probe]
        if component == "api":
            assert spec["grpc"]["port"] == settings.api.port, probe
        else:
            assert spec["httpGet"] == {"path": "/healthz", "port": "health"}, probe


@pytest.mark.parametrize("component", sorted(PUBLISHED))
def test_services_publish_the_component_ports(
    component: str, fleet: dict[tuple[str, str], dict[str, Any]]
) -> None:
    service = fleet[("Service", f"kannon-{component}")]
    pods = fleet[("Deployment", f"kannon-{component}")]["spec"]["template"]
    assert service["spec"]["selector"].items() <= pods["metadata"]["labels"].items()
    container_ports = {
        p["name"]: p["containerPort"] for p in pods["spec"]["containers"][0]["ports"]
    }
    published = set()
    for port in service["spec"]["ports"]:
        target = port["targetPort"]
        target = container_ports[target] if isinstance(target, str) else target
        published.add((target, port["port"]))
    assert published == {PUBLISHED[component]} | ALSO_PUBLISHED.get(component, set())


def test_the_migrate_job_runs_migrations_with_the_database_secret(
    fleet: dict[tuple[str, str], dict[str, Any]], stages: dict[str, Stage]
) -> None:
    job = fleet[("Job", "kannon-migrate")]
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert _image_repository(container["image"]) == "kannon-migrate"
    assert container["args"] == ["--config", CONFIG_IN_CONTAINER]
    assert exec_form(effective(stages, "migrate", "ENTRYPOINT"))[1:] == ["migrate"]
    assert _pod_environ(container).keys() == {"K_DATABASE_URL"}
    _assert_locked_down(pod, container, 10001)


def test_the_sender_pdb_protects_the_senders_without_blocking_drains(
    fleet: dict[tuple[str, str], dict[str, Any]],
) -> None:
    pdb = fleet[("PodDisruptionBudget", "kannon-sender")]
    sender = fleet[("Deployment", "kannon-sender")]
    labels = sender["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert 1 <= pdb["spec"]["minAvailable"] < sender["spec"]["replicas"]


def test_everything_lives_in_the_kannon_namespace(
    fleet: dict[tuple[str, str], dict[str, Any]],
) -> None:
    assert ("Namespace", "kannon") in fleet
    for (kind, name), resource in fleet.items():
        if kind != "Namespace":
            assert resource["metadata"].get("namespace") == "kannon", (kind, name)


def test_the_standalone_overlay_runs_one_standalone_pod_behind_the_same_services(
    fleet: dict[tuple[str, str], dict[str, Any]], stages: dict[str, Stage]
) -> None:
    kustomization = yaml.safe_load((STANDALONE / "kustomization.yaml").read_text())
    resources: dict[tuple[str, str], dict[str, Any]] = {}
    for name in kustomization["resources"]:
        for doc in _load_all(STANDALONE / name):
            resources[(doc["kind"], doc["metadata"]["name"])] = doc
    (deployment,) = [r for (kind, _), r in resources.items() if kind == "Deployment"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert _image_repository(container["image"]) == "kannon-base"
    assert exec_form(effective(stages, "base", "ENTRYPOINT"))[1:] == []
    assert container["args"] == ["standalone", "--config", CONFIG_IN_CONTAINER]
    _assert_locked_down(pod, container, 10001)
    environ = _pod_environ(container)
    assert {"K_DATABASE_URL", "K_API_ADMIN_TOKEN", "K_SECRET_KEY", "K_DATA_DIR"} <= environ.keys()
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "persistentVolumeClaim" in volumes[mounts[environ["K_DATA_DIR"]]], "NATS store on a PVC"
    generated = {g["name"] for g in kustomization["configMapGenerator"]}
    assert volumes[mounts["/etc/kannon"]]["configMap"]["name"] in generated
    # Same Service names and ports as the fleet, all selecting the standalone pod.
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for component in PUBLISHED:
        mine = resources[("Service", f"kannon-{component}")]
        theirs = fleet[("Service", f"kannon-{component}")]
        assert mine["spec"]["selector"].items() <= pod_labels.items()
        assert [p["port"] for p in mine["spec"]["ports"]] == [
            p["port"] for p in theirs["spec"]["ports"]
        ]

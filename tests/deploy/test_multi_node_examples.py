"""The multi-node examples (issue 13 items 3-4): the compose override with a three-node NATS
cluster and two IP pools' sender nodes, and the k8s ip-pools overlay. Offline: schema validation
and the settings each container would load (the manifests' strict validation is in
test_artifacts.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kannon.config import load_settings
from tests.deploy.test_artifacts import (
    COMPOSE,
    COMPOSE_CONFIG,
    COMPOSE_DIR,
    IP_POOLS,
    _assert_tool_ok,
    _run,
)

OVERRIDE = COMPOSE_DIR / "multi-node.yaml"


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def test_the_compose_override_validates_against_the_compose_spec() -> None:
    _assert_tool_ok(_run("check-jsonschema", "--builtin-schema", "vendor.compose-spec", OVERRIDE))


def test_the_compose_override_clusters_nats_and_gives_each_pool_its_sender() -> None:
    override = _load(OVERRIDE)["services"]
    base = _load(COMPOSE)["services"]
    kannon = {
        name
        for name, service in base.items()
        if service.get("image", "").startswith("kannon-") and name != "migrate"
    }
    nodes = {"nats", "nats-2", "nats-3"}
    for node in nodes:
        command = override[node]["command"]
        assert command[command.index("--cluster_name") + 1] == "kannon"
        routes = command[command.index("--routes") + 1].split(",")
        assert {r.split("//")[1].split(":")[0] for r in routes} == nodes
    pools = {}
    for name in sorted(kannon | {"sender-eu", "sender-us"}):
        env = override[name]["environment"]
        settings = load_settings({}, env, config_path=str(COMPOSE_CONFIG))
        assert settings.nats.stream_replicas == 3, name
        assert settings.nats_url is not None and len(settings.nats_url.split(",")) == 3, name
        assert settings.known_pools() == ("default", "eu", "us"), name
        if name.startswith("sender"):
            pools[name] = (settings.sender.pool, settings.sender.source_address)
    addresses = {
        name: override[name]["networks"]["default"]["ipv4_address"]
        for name in ("sender-eu", "sender-us")
    }
    assert pools == {
        "sender": ("default", None),
        "sender-eu": ("eu", addresses["sender-eu"]),
        "sender-us": ("us", addresses["sender-us"]),
    }
    for name in ("sender-eu", "sender-us"):
        assert override[name]["extends"] == {"file": COMPOSE.name, "service": "sender"}


def test_the_ip_pools_overlay_runs_a_sender_per_pool_bound_to_its_nodes_address() -> None:
    kustomization = _load(IP_POOLS / "kustomization.yaml")
    docs = [
        doc
        for name in kustomization["resources"]
        for doc in yaml.safe_load_all((IP_POOLS / name).read_text(encoding="utf-8"))
    ]
    (namespace,) = [doc for doc in docs if doc["kind"] == "Namespace"]
    # hostNetwork is refused under "restricted": the senders have their own namespace.
    assert namespace["metadata"]["name"] == kustomization["namespace"] != "kannon"
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    seen = {}
    for doc in [doc for doc in docs if doc["kind"] == "DaemonSet"]:
        pod = doc["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = {var["name"]: var for var in container["env"]}
        pool = env["K_SENDER_POOL"]["value"]
        assert pod["nodeSelector"] == {"kannon.io/ip-pool": pool}
        assert pod["hostNetwork"] is True
        assert env["K_SENDER_SOURCE_ADDRESS"]["valueFrom"]["fieldRef"]["fieldPath"] == (
            "status.hostIP"
        )
        values = {k: v["value"] for k, v in env.items() if "value" in v}
        values["K_SENDER_SOURCE_ADDRESS"] = "192.0.2.10"  # what the fieldRef gives
        settings = load_settings({}, values, config_path=str(IP_POOLS / "kannon.yaml"))
        assert settings.nats_url
        assert settings.sender.pool == pool
        (volume,) = [v for v in pod["volumes"] if "configMap" in v]
        assert volume["configMap"]["name"] == kustomization["configMapGenerator"][0]["name"]
        assert settings.health.port == container["ports"][0]["containerPort"]
        seen[pool] = settings.sender.hostname
    assert set(seen) == {"eu", "us"} and len(set(seen.values())) == 2

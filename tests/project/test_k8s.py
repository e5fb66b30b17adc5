"""The Kubernetes example, validated offline against the Kubernetes schemas (no cluster runs
here) and checked against the image and dev8's default configuration it runs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from dev8.config import load_config

CONTAINERS = Path(__file__).resolve().parents[2] / "containers"
MANIFEST = CONTAINERS / "k8s" / "workspace.yaml"


def _documents() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc]


def _by_kind(kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in _documents() if doc["kind"] == kind]
    return found


def _pod() -> dict[str, Any]:
    spec: dict[str, Any] = _by_kind("Deployment")["spec"]["template"]["spec"]
    return spec


def _workspace_container() -> dict[str, Any]:
    (container,) = [c for c in _pod()["containers"] if c["name"] == "workspace"]
    return container


@pytest.mark.parametrize("index", range(len(_documents())))
def test_every_resource_matches_the_kubernetes_schema(index: int) -> None:
    document = _documents()[index]
    version = kubernetes_validate.latest_version()
    # strict: unknown fields (a misspelt key) are errors too.
    assert kubernetes_validate.validate(document, version, strict=True)


def test_the_validator_catches_a_mistake() -> None:
    deployment = _by_kind("Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["paht"] = (
        "/health"
    )
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), strict=True)


def test_probes_hit_dev8s_probe_listener() -> None:
    container = _workspace_container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"code-server": 8080, "ssh": 2222, "api": 9000, "probes": 9001}
    config = load_config(CONTAINERS / "supervisor.yaml", environ={})
    assert f":{ports['api']}" in str(config.api.bind)
    # Its own accept loop: a connection flood on the API's port does not fail liveness.
    assert f":{ports['probes']}" in str(config.api.probe_bind)
    paths = {
        probe: (container[probe]["httpGet"]["path"], container[probe]["httpGet"]["port"])
        for probe in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    # Liveness never follows a service's state (one stopped on purpose would restart the pod).
    assert paths == {
        "startupProbe": ("/livez", "probes"),
        "livenessProbe": ("/livez", "probes"),
        "readinessProbe": ("/readyz", "probes"),
    }
    healthcheck = (CONTAINERS / "base" / "Dockerfile").read_text()
    assert '"http://127.0.0.1:9001/livez"' in healthcheck
    # The token comes from the mounted secret file the manifest provides.
    assert config.api.token_file == "/run/secrets/dev8/api-token"
    exposed = re.search(r"^EXPOSE (.+)$", (CONTAINERS / "base" / "Dockerfile").read_text(), re.M)
    assert exposed is not None
    assert sorted(int(p) for p in exposed.group(1).split()) == sorted(ports.values())


def test_grace_period_outlasts_dev8s_shutdown_deadline() -> None:
    shutdown = load_config(CONTAINERS / "supervisor.yaml", environ={}).shutdown
    grace = _pod()["terminationGracePeriodSeconds"]
    deadline = shutdown.timeout + shutdown.kill_grace
    assert deadline < grace <= deadline + 15


def test_workspace_is_the_claim_and_secrets_come_from_the_platform() -> None:
    pod = _pod()
    claim = _by_kind("PersistentVolumeClaim")["metadata"]["name"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in _workspace_container()["volumeMounts"]}
    assert volumes[mounts["/workspace"]]["persistentVolumeClaim"]["claimName"] == claim
    assert volumes[mounts["/run/secrets/dev8"]]["secret"]["secretName"]
    env = {e["name"]: e.get("value") for e in _workspace_container()["env"]}
    assert {"ENVIRONMENT_ID", "USER_ID", "AZURE_KEY_VAULT_NAME"} <= env.keys()
    assert env["DEV8_API__TOKEN_FILE"].startswith("/run/secrets/dev8/")
    # Azure credentials come from workload identity, never from a literal in the manifest.
    assert not any("SECRET" in name or "PASSWORD" in name for name in env)
    labels = _by_kind("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert labels["azure.workload.identity/use"] == "true"
    account = _by_kind("ServiceAccount")
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert "azure.workload.identity/client-id" in account["metadata"]["annotations"]


def test_resources_are_limited_and_privileges_narrowed() -> None:
    container = _workspace_container()
    assert {"cpu", "memory"} <= container["resources"]["limits"].keys()
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert "SYS_ADMIN" not in security["capabilities"]["add"]
    assert _by_kind("Deployment")["spec"]["strategy"]["type"] == "Recreate"

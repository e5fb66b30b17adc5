"""Fixtures shared by the tests, and the kind markers (unit, e2e, root, system) of every test.

The kinds come from one table, tests/support/kinds.py; `pytest -m unit` is the fast loop.
"""

from __future__ import annotations

import gc
import pwd
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.dev8_harness import kill_marked, throwaway_user
from support.keyvault_fake import (
    AZURE_ENV,
    FakeImds,
    FakeKeyVault,
    TlsFiles,
    make_tls,
    open_fake_imds,
    open_fake_vault,
)
from support.kinds import UNIT, kinds_of
from support.net import free_port
from support.workspace_harness import (
    USER_ID,
    WorkspaceSecrets,
    WorkspaceUser,
    make_secrets,
    workspace_user,
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its kinds. A module missing from the table gets none (so `-m unit`
    leaves it out) and tests/project/test_test_kinds.py fails, naming it."""
    for item in items:
        module = item.path.stem
        test = item.name.split("[")[0] if item.cls is None else item.cls.__name__
        kinds = kinds_of(module, test, (mark.name for mark in item.iter_markers()))
        if UNIT in kinds and len(kinds) > 1:
            raise pytest.UsageError(f"{module}::{test} is unit and {sorted(kinds - {UNIT})}")
        for kind in sorted(kinds):
            item.add_marker(kind)


@pytest.fixture(scope="module")
def collect_garbage_after_module() -> Iterator[None]:
    """trio-websocket leaves some closed clients' sockets to the collector: a module that
    ignores that warning collects them before it ends, not during another module's test."""
    yield
    gc.collect()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty directory standing for the workspace user's home."""
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def user() -> Iterator[pwd.struct_passwd]:
    """A real non-root user with a free uid and no home of its own, removed after the module.
    Needs root (a user with a home of its own, for dev8 runs: `workspace`)."""
    with throwaway_user("d8t") as created:
        yield created


@pytest.fixture(scope="module")
def workspace() -> Iterator[WorkspaceUser]:
    """A real user whose home is a new workspace (/var/lib/dev8-test-*), for the module's dev8
    runs as root; removed after the module with every process it still has. Needs root."""
    with workspace_user() as created:
        yield created


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> WorkspaceSecrets:
    """The workspace's secrets (random values under USER_ID's names) and the client's key files."""
    return make_secrets(tmp_path_factory.mktemp("client"), USER_ID)


@pytest.fixture
def api_port() -> int:
    """A free TCP port on 127.0.0.1 for dev8's API."""
    return free_port()


@pytest.fixture
def marker() -> Iterator[str]:
    """A unique argv string for this test's service processes; leftovers are killed after it."""
    value = f"dev8-e2e-{uuid.uuid4().hex[:12]}"
    yield value
    kill_marked(value)


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A private CA and a server certificate for 127.0.0.1 (the fake Key Vault's HTTPS)."""
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def imds(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeImds]:
    """A fake managed-identity endpoint; the SDK's other credential variables are cleared."""
    for name in AZURE_ENV:
        monkeypatch.delenv(name, raising=False)
    with open_fake_imds() as imds:
        monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.url)
        yield imds


@pytest.fixture
def vault(tls: TlsFiles, imds: FakeImds, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKeyVault]:
    """A Key Vault-compatible endpoint over HTTPS that accepts the fake identity's tokens, in
    the environment the platform's agent gives dev8 (a dev8 started by the test inherits it)."""
    with open_fake_vault(tls) as vault:
        vault.accepted_tokens = imds.issued
        # The private CA is trusted the standard way, as in production.
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_cert))
        monkeypatch.setenv("AZURE_KEY_VAULT_URL", vault.url)
        yield vault
        vault.heal()  # a test that left it hanging or failing releases its waiting requests

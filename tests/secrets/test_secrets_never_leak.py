"""Run the whole secrets flow with known values; no byte of them may appear in any output."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
import trio
from support.keyvault_fake import FakeKeyVault

from actors import Event
from dev8.monitoring.logs import configure_logging
from dev8.secrets import (
    Injector,
    MissingSecretError,
    Rotator,
    SecretsError,
    build_provider,
    secrets_config_from,
)
from dev8.secrets.errors import SecretsRefreshFailed
from dev8.secrets.rotator import Status
from dev8.secrets.runtime import refresh_failure, refresh_reply


@pytest.fixture
def rendered_logs() -> Iterator[io.StringIO]:
    """dev8's own logging configuration (JSON lines, stdlib routed too), into a buffer."""
    buffer = io.StringIO()
    old = structlog.get_config()
    root = logging.getLogger()
    old_handlers, old_level = root.handlers[:], root.level
    azure = logging.getLogger("azure")
    old_azure_level = azure.level
    configure_logging(level="debug", stream=buffer)
    try:
        yield buffer
    finally:
        structlog.configure(**old)
        root.handlers[:] = old_handlers
        root.setLevel(old_level)
        azure.setLevel(old_azure_level)


def canaries(values: dict[str, str]) -> list[str]:
    """Every value, and every long-enough line of a multi-line one (a key's base64 rows)."""
    found = []
    for value in values.values():
        found.append(value.strip())
        found.extend(line.strip() for line in value.splitlines() if len(line.strip()) >= 16
                     and "-----" not in line)  # fmt: skip
        with contextlib.suppress(ValueError, AttributeError):
            found.extend(str(v) for v in json.loads(value).values())
    return [c for c in found if c]


async def test_no_secret_value_reaches_any_output(
    vault: FakeKeyVault,
    rendered_logs: io.StringIO,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The Azure SDK, msal and urllib3 log through stdlib logging: look at everything they say.
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="azure")
    fake = vault  # the shared fake (conftest.py), behind the fake managed identity
    key = tmp_path / "id"
    with trio.fail_after(30):
        await trio.run_process(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key])
    values = {
        "github-token-u7": "ghp_CANARYgithubTOKEN0123456789abcdef",
        "copilot-token-u7": "ghu_CANARYcopilotTOKEN0123456789",
        "ssh-private-key-u7": key.read_text(),
        "ssh-public-key-u7": (tmp_path / "id.pub").read_text(),
        "custom-env-vars-u7": json.dumps({"API_KEY": "CANARYenvVALUEzz9876"}),
    }
    for name, value in values.items():
        fake.set_secret(name, value)
    rotated = {"github-token-u7": "ghp_CANARYrotatedTOKEN000111222333"}

    config = secrets_config_from(
        {"sdk_retries": 0, "fetch_timeout": 5, "profile_dir": None},
        {"AZURE_KEY_VAULT_URL": fake.url, "USER_ID": "u7",
         "DEV8_TEST_KEYVAULT_SKIP_CHALLENGE_CHECK": "1"},
    )  # fmt: skip
    home = tmp_path / "home"
    home.mkdir()
    events: list[Event] = []
    outputs: list[str] = [repr(config)]
    provider = build_provider(config)
    try:
        rotator = Rotator.from_config(
            config, provider=provider, injector=Injector.from_config(config, home=home, owner=None),
            publish=events.append,
        )  # fmt: skip
        async with trio.open_nursery() as nursery:
            outputs.append(repr(await nursery.start(rotator.run)))
            fake.set_secret("github-token-u7", rotated["github-token-u7"])
            outputs.append(repr(await rotator.refresh()))
            # A server error body that echoes a value must not travel into our messages.
            fake.fail(403, message=f"denied for {rotated['github-token-u7']}")
            outputs.append(repr(await rotator.refresh()))
            fake.heal()
            outputs.append(repr(rotator.stats))
            outputs.append(repr(rotator.versions))
            nursery.cancel_scope.cancel()

        # A required secret that is missing: the refused refresh, as a traceback would show it.
        lonely = Rotator(provider=provider, injector=Injector(home=home), required=["github_token"],
                         names={"github_token": "github-token-absent"})  # fmt: skip
        async with trio.open_nursery() as nursery:
            result = await nursery.start(lonely.run)  # its first pass
            outputs.append(repr(lonely.waiting_for()))
            outputs.append(repr(await lonely.ref.call(Status(), timeout=30)))
            nursery.cancel_scope.cancel()
        failure = refresh_failure(result, refresh_reply(result))
        with pytest.raises(SecretsRefreshFailed) as caught:
            raise failure
        outputs.append("".join(traceback.format_exception(caught.value)))
        outputs.append(json.dumps(failure.details))
        structlog.get_logger("test").exception("refresh failed", exc_info=caught.value)
    finally:
        await provider.aclose()

    # The flow really ran: the values reached the files, and only the files.
    assert rotated["github-token-u7"] in (home / ".git-credentials").read_text()
    assert "CANARYenvVALUEzz9876" in (home / ".config/dev8/secrets.env").read_text()
    kinds = [e.kind for e in events]
    assert {"secret_fetched", "secret_rotated", "secret_fetch_failed"} <= set(kinds)

    for event in events:
        outputs.extend([repr(event), str(event), json.dumps(event.data())])
    outputs.append(rendered_logs.getvalue())
    outputs.extend(caplog.messages)
    outputs.extend(record.getMessage() + repr(record.args) for record in caplog.records)
    captured = capsys.readouterr()
    outputs.extend([captured.out, captured.err])
    everything = "\n".join(outputs)
    assert "secrets.checked" in everything
    assert "Traceback" in everything
    for canary in canaries({**values, **rotated}):
        at = everything.find(canary)
        assert at < 0, (
            f"a secret value leaked ({len(canary)} chars): {everything[max(0, at - 700) : at]!r}"
        )
    assert issubclass(MissingSecretError, SecretsError)
    assert issubclass(SecretsRefreshFailed, SecretsError)

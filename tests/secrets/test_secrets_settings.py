"""The ``secrets:`` configuration and the local providers (directory, environment)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dev8.secrets import (
    DirectoryProvider,
    EnvProvider,
    NullProvider,
    SecretFetchError,
    SecretsConfigError,
    SecretValue,
    build_provider,
    secrets_config_from,
)


def test_nothing_configured_means_no_provider() -> None:
    config = secrets_config_from(None, {})
    assert config.provider == "none"
    assert config.rotation_interval == 3600.0
    assert config.required == frozenset({"github_token"})
    assert config.verify_challenge_resource is True
    assert isinstance(build_provider(config), NullProvider)


def test_vault_from_the_agents_environment() -> None:
    env = {"AZURE_KEY_VAULT_NAME": "kv-dev8", "USER_ID": "u-1", "ENVIRONMENT_ID": "e9"}
    config = secrets_config_from({"vault_url": "https://ignored.vault.azure.net"}, env)
    assert config.provider == "keyvault"
    assert config.vault_url == "https://kv-dev8.vault.azure.net"
    assert config.resolved_names() == {
        "github_token": "github-token-u-1",
        "copilot_token": "copilot-token-u-1",
        "ssh_private_key": "ssh-private-key-u-1",
        "ssh_public_key": "ssh-public-key-u-1",
        "custom_env_vars": "custom-env-vars-u-1",
    }


def test_a_full_vault_url_wins_over_a_name() -> None:
    env = {
        "AZURE_KEY_VAULT_NAME": "kv",
        "AZURE_KEY_VAULT_URL": "https://x.example:8443/",
        "USER_ID": "u",
    }
    assert secrets_config_from({}, env).vault_url == "https://x.example:8443"


def test_file_settings_apply_when_the_environment_is_silent() -> None:
    config = secrets_config_from(
        {
            "vault_name": "kvfile",
            "user_id": "bob",
            "names": {"github_token": "gh-{environmentId}-{userId}"},
            "required": ["github_token", "ssh_private_key"],
            "rotation_interval": 60,
            "rotation_jitter": 0,
            "profile_dir": None,
        },
        {"ENVIRONMENT_ID": "env1"},
    )
    assert config.vault_url == "https://kvfile.vault.azure.net"
    assert config.resolved_names()["github_token"] == "gh-env1-bob"
    assert config.required == {"github_token", "ssh_private_key"}
    assert (config.rotation_interval, config.rotation_jitter) == (60.0, 0.0)
    assert config.profile_dir is None


@pytest.mark.parametrize(
    ("data", "env", "message"),
    [
        ({"bogus": 1}, {}, "unknown key"),
        ({}, {"AZURE_KEY_VAULT_NAME": "a_b"}, "not a valid vault name"),
        ({}, {"AZURE_KEY_VAULT_URL": "http://127.0.0.1:1"}, "must be https"),
        ({}, {"AZURE_KEY_VAULT_NAME": "kv1"}, "set USER_ID"),
        ({"provider": "keyvault"}, {}, "no vault is configured"),
        ({"provider": "directory"}, {}, "secrets.directory is unset"),
        ({"provider": "vault"}, {}, "must be one of"),
        ({"names": {"gpg_key": "x"}}, {}, "unknown role 'gpg_key'"),
        ({"names": {"github_token": "gh-{user}"}}, {}, "unknown placeholder"),
        ({"required": ["nope"]}, {}, "unknown role"),
        ({"required": "github_token"}, {}, "must be a list"),
        ({"rotation_interval": 0}, {}, "must be > 0"),
        ({"fetch_timeout": "10"}, {}, "must be a number"),
        ({"retry_initial_delay": 10, "retry_max_delay": 5}, {}, "retry_max_delay"),
        ({"env_file": "../escape"}, {}, "inside the workspace home"),
        ({"provider": "env", "names": {"github_token": "gh/../x"}}, {"USER_ID": "u"},
         "letters, digits"),
        ({"verify_challenge_resource": False}, {"AZURE_KEY_VAULT_NAME": "kv1", "USER_ID": "u"},
         "loopback"),
        ({}, {"AZURE_KEY_VAULT_URL": "https://10.0.0.1", "USER_ID": "u",
              "DEV8_TEST_KEYVAULT_SKIP_CHALLENGE_CHECK": "1"}, "loopback"),
    ],
)  # fmt: skip
def test_bad_configuration_is_a_clear_error(
    data: dict[str, object], env: dict[str, str], message: str
) -> None:
    with pytest.raises(SecretsConfigError, match=message):
        secrets_config_from(data, env)


def test_test_only_switch_is_honoured_for_a_loopback_vault() -> None:
    env = {"AZURE_KEY_VAULT_URL": "https://127.0.0.1:9443", "USER_ID": "u",
           "DEV8_TEST_KEYVAULT_SKIP_CHALLENGE_CHECK": "1"}  # fmt: skip
    assert secrets_config_from({}, env).verify_challenge_resource is False


def test_auto_picks_env_or_directory(tmp_path: Path) -> None:
    env_config = secrets_config_from({}, {"DEV8_SECRET_GITHUB_TOKEN_U": "x", "USER_ID": "u"})
    assert env_config.provider == "env"
    assert isinstance(build_provider(env_config), EnvProvider)
    dir_config = secrets_config_from({"directory": str(tmp_path)}, {"USER_ID": "u"})
    assert dir_config.provider == "directory"
    assert isinstance(build_provider(dir_config), DirectoryProvider)


def test_secret_value_never_shows_its_value() -> None:
    secret = SecretValue("github-token-u", "ghp_hidden", "v7")
    assert "ghp_hidden" not in repr(secret)
    assert "ghp_hidden" not in str(secret)
    assert "ghp_hidden" not in f"{secret}"
    assert repr(secret) == "SecretValue(name='github-token-u', version='v7')"


async def test_env_provider_maps_names_to_variables() -> None:
    provider = EnvProvider({"DEV8_SECRET_GITHUB_TOKEN_U_1": "ghp_env"})
    secret = await provider.get("github-token-u-1")
    assert secret is not None
    assert secret.value == "ghp_env"
    assert len(secret.version) == 16
    assert await provider.get("copilot-token-u-1") is None
    with pytest.raises(ValueError, match="invalid secret name"):
        await provider.get("../etc/passwd")


async def test_directory_provider_versions_follow_content(tmp_path: Path) -> None:
    # A Kubernetes secret volume: names are symlinks into a ..data directory.
    data = tmp_path / "..data"
    data.mkdir()
    (data / "github-token-u").write_text("one")
    (tmp_path / "github-token-u").symlink_to(Path("..data") / "github-token-u")
    provider = DirectoryProvider(tmp_path)

    first = await provider.get("github-token-u")
    (data / "github-token-u").write_text("two")
    second = await provider.get("github-token-u")
    again = await provider.get("github-token-u")

    assert first is not None
    assert second is not None
    assert again is not None
    assert (first.value, second.value) == ("one", "two")
    assert first.version != second.version == again.version
    assert await provider.get("missing-one") is None


@pytest.mark.parametrize(
    ("setup", "reason"),
    [("directory", "not_a_file"), ("binary", "not_utf8"), ("huge", "too_large")],
)
async def test_directory_provider_failures_name_a_reason(
    tmp_path: Path, setup: str, reason: str
) -> None:
    path = tmp_path / "s"
    if setup == "directory":
        path.mkdir()
    elif setup == "binary":
        path.write_bytes(b"\xff\xfe")
    else:
        path.write_bytes(b"x" * (256 * 1024 + 1))
    with pytest.raises(SecretFetchError) as caught:
        await DirectoryProvider(tmp_path).get("s")
    assert (caught.value.name, caught.value.reason) == ("s", reason)


def test_config_reads_only_what_it_is_given() -> None:
    """The builder takes the environment as a mapping: no hidden reads of os.environ."""
    os.environ["AZURE_KEY_VAULT_NAME"] = "from-process-env"
    try:
        assert secrets_config_from({}, {}).vault_url is None
    finally:
        del os.environ["AZURE_KEY_VAULT_NAME"]

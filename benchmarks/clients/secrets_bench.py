"""Secret injection: fetch the standard set from a local Key Vault-compatible endpoint and write it.

Runs with dev8's venv: ``secrets_bench.py --tests DIR --cold N --warm M``. The vault and a fake
IMDS (``tests/support/keyvault_fake.py``: HTTPS, bearer challenge, managed-identity token) run in
this process; each cold pass is a fresh ``once`` process, so it pays what a starting dev8 pays: the
Azure SDK import, the challenge, the token, 5 GETs and 8 files. Warm passes are forced refreshes
in a running rotator (every secret fetched again and every file rewritten if changed).
Prints one JSON object (names and timings only, never a value).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STARTED_NS = time.time_ns()
USER = "bench"
#: dev8 logs JSON on stdout too: the result line is marked.
MARK = "BENCH-RESULT "


def _env(vault_url: str, imds_url: str, ca: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "IDENTITY_", "MSI_"))}
    env.update(
        AZURE_POD_IDENTITY_AUTHORITY_HOST=imds_url,
        REQUESTS_CA_BUNDLE=ca,
        AZURE_KEY_VAULT_URL=vault_url,
        DEV8_TEST_KEYVAULT_SKIP_CHALLENGE_CHECK="1",
        USER_ID=USER,
    )
    return env


def _seed(vault: object) -> None:
    # Lazy imports: a cold pass must pay for its own imports, the parent only for the vault's.
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ed25519  # noqa: PLC0415

    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    values = {
        f"github-token-{USER}": "ghp_" + "b" * 36,
        f"copilot-token-{USER}": "ghu_" + "c" * 36,
        f"ssh-private-key-{USER}": private,
        f"ssh-public-key-{USER}": public + " bench@dev8",
        f"custom-env-vars-{USER}": json.dumps({"EDITOR": "vim", "API_URL": "https://example.test"}),
    }
    for name, value in values.items():
        vault.set_secret(name, value)  # type: ignore[attr-defined]


def once(home: str, warm: int) -> None:
    """One dev8-like start: build everything, first injection, then ``warm`` forced refreshes."""
    import trio  # noqa: PLC0415 - a cold pass pays for its imports

    from dev8.secrets import (  # noqa: PLC0415
        Injector,
        Rotator,
        build_provider,
        secrets_config_from,
    )

    async def main() -> dict[str, object]:
        config = secrets_config_from(
            {"profile_dir": None, "sdk_retries": 0, "rotation_jitter": 0}, os.environ
        )
        provider = build_provider(config)
        injector = Injector.from_config(config, home=home, owner=None)
        rotator = Rotator.from_config(config, provider=provider, injector=injector)
        refresh: list[float] = []
        try:
            async with trio.open_nursery() as nursery:
                first = await nursery.start(rotator.run)
                first_done = time.time_ns()
                if not first.ok:
                    raise RuntimeError(f"first pass failed: {first}")
                for _ in range(warm):
                    begin = time.perf_counter()
                    result = await rotator.refresh()
                    refresh.append(time.perf_counter() - begin)
                    if not result.ok:
                        raise RuntimeError("a refresh failed")
                nursery.cancel_scope.cancel()
        finally:
            await provider.aclose()
        return {
            "process_start_ns": STARTED_NS,
            "first_done_ns": first_done,
            "refresh_s": refresh,
        }

    result = trio.run(main)
    result["files"] = sorted(str(p.relative_to(home)) for p in Path(home).rglob("*") if p.is_file())
    print(MARK + json.dumps(result))


def parent(args: argparse.Namespace) -> None:
    sys.path.insert(0, args.tests)
    from support.keyvault_fake import (  # type: ignore[import-not-found]  # noqa: PLC0415
        make_tls,
        open_fake_imds,
        open_fake_vault,
    )

    with tempfile.TemporaryDirectory(prefix="dev8-bench-secrets-") as scratch:
        tls = make_tls(Path(scratch))
        with open_fake_imds() as imds, open_fake_vault(tls) as vault:
            vault.accepted_tokens = imds.issued
            _seed(vault)
            env = _env(vault.url, imds.url, str(tls.ca_cert))
            cold, in_process, files, refresh = [], [], [], []
            for index in range(args.cold):
                home = Path(scratch) / f"home{index}"
                home.mkdir()
                launched = time.time_ns()
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "once",
                        "--home",
                        str(home),
                        "--warm",
                        str(args.warm if index == 0 else 0),
                    ],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=120,
                    check=True,
                )
                result = json.loads(out.stdout.split(MARK, 1)[1])
                cold.append((result["first_done_ns"] - launched) / 1e9)
                in_process.append((result["first_done_ns"] - result["process_start_ns"]) / 1e9)
                refresh += result["refresh_s"]
                files = result["files"]
    print(
        json.dumps(
            {
                "cold_s": cold,
                "cold_in_process_s": in_process,
                "refresh_s": refresh,
                "files_written": files,
                "secrets": 5,
            }
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", nargs="?", default="parent", choices=["parent", "once"])
    parser.add_argument("--tests", default=str(Path(__file__).resolve().parents[2] / "tests"))
    parser.add_argument("--cold", type=int, default=5)
    parser.add_argument("--warm", type=int, default=20)
    parser.add_argument("--home", default="")
    arguments = parser.parse_args()
    if arguments.mode == "once":
        once(arguments.home, arguments.warm)
    else:
        parent(arguments)

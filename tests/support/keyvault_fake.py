"""A Key Vault-compatible HTTPS endpoint and a fake IMDS token endpoint, on 127.0.0.1.

Only Azure's cloud is faked, at the wire: the real ``SecretClient`` and the real
``DefaultAzureCredential`` talk HTTP(S) to these servers. The vault speaks the REST contract the
SDK uses (bearer challenge, ``GET /secrets/{name}/`` for the latest version and
``GET /secrets/{name}/{version}``, 404 ``SecretNotFound``), and has switches to answer
401/403/429/500 or to hang, plus a request log for assertions.

Both servers run in a thread (``ThreadingHTTPServer``); use them through the context managers
:func:`open_fake_vault` and :func:`open_fake_imds`, which stop every thread and socket on exit.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VAULT_RESOURCE = "https://vault.azure.net"
TENANT = "72f988bf-0000-0000-0000-000000000000"


# ---- TLS -------------------------------------------------------------------------------------


@attrs.frozen
class TlsFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path


def make_tls(directory: Path) -> TlsFiles:
    """A private CA and a server certificate for 127.0.0.1/localhost, signed by it."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev8 test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.server_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


def server_context(tls: TlsFiles) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.server_cert, tls.server_key)
    return context


# ---- threaded server plumbing ----------------------------------------------------------------


@attrs.frozen
class LoggedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


class ThreadedServer(ThreadingHTTPServer):
    """One thread per connection; TLS handshakes happen in that thread, not the accept loop."""

    daemon_threads = False
    block_on_close = True

    def __init__(
        self, handler: type[BaseHTTPRequestHandler], context: ssl.SSLContext | None
    ) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.context = context
        self.connections: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.errors: list[str] = []

    def finish_request(self, request: Any, client_address: Any) -> None:
        conn: socket.socket = request
        if self.context is not None:
            try:
                conn = self.context.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as e:
                self.errors.append(f"handshake: {type(e).__name__}")
                request.close()
                return
        with self.lock:
            self.connections.add(conn)
        try:
            self.RequestHandlerClass(conn, client_address, self)  # type: ignore[arg-type]
        except OSError as e:  # the client went away (an abandoned SDK call, a closed pool)
            self.errors.append(f"connection: {type(e).__name__}")
        finally:
            with self.lock:
                self.connections.discard(conn)
            conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.errors.append("handler error")

    def stop(self) -> None:
        self.release.set()
        self.shutdown()
        with self.lock:
            conns = list(self.connections)
        for conn in conns:
            with suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self.server_close()  # joins every connection thread


@contextmanager
def serving(server: ThreadedServer) -> Iterator[None]:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield
    finally:
        server.stop()
        thread.join()


class JsonHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def logged(self) -> LoggedRequest:
        parts = urlsplit(self.path)
        return LoggedRequest(
            self.command,
            parts.path,
            parse_qs(parts.query),
            {k.lower(): v for k, v in self.headers.items()},
        )


# ---- the vault -------------------------------------------------------------------------------


@attrs.define
class _Version:
    version: str
    value: str = attrs.field(repr=False)
    created: int


class FakeKeyVault:
    """State and switches of the fake vault. Thread-safe: tests poke it while the SDK calls it."""

    def __init__(self, tls: TlsFiles) -> None:
        self._lock = threading.Lock()
        self._secrets: dict[str, list[_Version]] = {}
        self.requests: list[LoggedRequest] = []
        #: Bearer tokens the vault accepts; None accepts any bearer token.
        self.accepted_tokens: set[str] | None = None
        self._fail_status: int | None = None
        self._fail_times: int | None = None
        self._fail_body_message = "injected failure"
        self._hang = False
        self._hang_times: int | None = None
        self._drop_times = 0
        self.retry_after = "0"
        self._server = ThreadedServer(self._handler_class(), server_context(tls))
        self.port = self._server.server_address[1]
        self.url = f"https://127.0.0.1:{self.port}"

    # -- state --

    def set_secret(self, name: str, value: str) -> str:
        """Store a new version; returns its id (32 hex digits, like Key Vault's)."""
        version = uuid.uuid4().hex
        with self._lock:
            self._secrets.setdefault(name, []).append(_Version(version, value, int(time.time())))
        return version

    def delete_secret(self, name: str) -> None:
        with self._lock:
            self._secrets.pop(name, None)

    def latest_version(self, name: str) -> str:
        with self._lock:
            return self._secrets[name][-1].version

    # -- switches --

    def fail(self, status: int, *, times: int | None = None, message: str | None = None) -> None:
        """Answer authenticated requests with ``status`` (``times`` times, or until cleared)."""
        with self._lock:
            self._fail_status, self._fail_times = status, times
            if message is not None:
                self._fail_body_message = message

    def hang(self, *, times: int | None = None) -> None:
        """Hold secret requests without answering until :meth:`heal` (or the end): every one,
        or only the next ``times`` (later ones are answered while those stay held)."""
        with self._lock:
            self._hang = True
            self._hang_times = times
            self._server.release.clear()

    def drop(self, *, times: int) -> None:
        """Close the connection of the next ``times`` authenticated requests without answering."""
        with self._lock:
            self._drop_times = times

    def throttle(self, retry_after: str, *, times: int | None = None) -> None:
        """Answer 429 with this ``Retry-After`` (``times`` times, or until cleared)."""
        with self._lock:
            self.retry_after = retry_after
        self.fail(429, times=times)

    def heal(self) -> None:
        with self._lock:
            self._fail_status = self._fail_times = None
            self._hang, self._hang_times = False, None
            self._drop_times = 0
        self._server.release.set()

    def secret_requests(self) -> list[LoggedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path.startswith("/secrets/")]

    def authenticated_requests(self, name: str | None = None) -> list[LoggedRequest]:
        """Secret requests that carried a token (the ones the vault would count and throttle)."""
        return [
            r
            for r in self.secret_requests()
            if r.authorization and (name is None or r.path.startswith(f"/secrets/{name}/"))
        ]

    # -- HTTP --

    def _challenge(self) -> dict[str, str]:
        return {
            "WWW-Authenticate": (
                f'Bearer authorization="https://login.microsoftonline.com/{TENANT}", '
                f'resource="{VAULT_RESOURCE}"'
            )
        }

    def _held_or_dropped(self) -> bool:
        """Apply the hang and drop switches: True when the request gets no answer."""
        with self._lock:
            hang = self._hang
            if hang and self._hang_times is not None:
                self._hang_times -= 1
                if self._hang_times <= 0:
                    self._hang, self._hang_times = False, None
            drop = self._drop_times > 0
            if drop:
                self._drop_times -= 1
        if hang:
            self._server.release.wait(60)
        return hang or drop

    def _answer(self, handler: JsonHandler) -> None:
        request = handler.logged()
        with self._lock:
            self.requests.append(request)
        if "api-version" not in request.query:
            handler.send_json(400, {"error": {"code": "MissingApiVersionParameter"}})
            return
        auth = request.authorization or ""
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
        if token is None or (
            self.accepted_tokens is not None and token not in self.accepted_tokens
        ):
            body = {
                "error": {
                    "code": "Unauthorized",
                    "message": "AKV10000: Request is missing a Bearer or PoP token.",
                }
            }
            handler.send_json(401, body, self._challenge())
            return
        if self._held_or_dropped():
            handler.close_connection = True
            return
        with self._lock:
            status = self._fail_status
            if status is not None and self._fail_times is not None:
                self._fail_times -= 1
                if self._fail_times <= 0:
                    self._fail_status = self._fail_times = None
            message = self._fail_body_message
        if status is not None:
            headers = self._challenge() if status == 401 else {}
            if status == 429 or (status == 503 and self.retry_after != "0"):
                headers["Retry-After"] = self.retry_after
            handler.send_json(status, {"error": {"code": "Injected", "message": message}}, headers)
            return
        parts = [p for p in request.path.split("/") if p]
        if len(parts) not in (2, 3) or parts[0] != "secrets":
            handler.send_json(400, {"error": {"code": "BadParameter", "message": "bad path"}})
            return
        name = parts[1]
        wanted = parts[2] if len(parts) == 3 else None
        with self._lock:
            versions = list(self._secrets.get(name, []))
        found = [v for v in versions if v.version == wanted] if wanted else versions[-1:]
        if not found:
            message = f"A secret with (name/id) {name} was not found in this key vault."
            handler.send_json(404, {"error": {"code": "SecretNotFound", "message": message}})
            return
        secret = found[0]
        handler.send_json(
            200,
            {
                "value": secret.value,
                "id": f"{self.url}/secrets/{name}/{secret.version}",
                "attributes": {
                    "enabled": True,
                    "created": secret.created,
                    "updated": secret.created,
                    "recoveryLevel": "Recoverable+Purgeable",
                },
                "tags": {},
            },
        )

    def _handler_class(self) -> type[JsonHandler]:
        vault = self

        class Handler(JsonHandler):
            def do_GET(self) -> None:
                vault._answer(self)

        return Handler


@contextmanager
def open_fake_vault(tls: TlsFiles) -> Iterator[FakeKeyVault]:
    vault = FakeKeyVault(tls)
    with serving(vault._server):
        yield vault


# ---- IMDS ------------------------------------------------------------------------------------


class FakeImds:
    """Azure's instance metadata token endpoint, for ``AZURE_POD_IDENTITY_AUTHORITY_HOST``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: list[LoggedRequest] = []
        self.issued: set[str] = set()
        self.fail_status: int | None = None
        self._server = ThreadedServer(self._handler_class(), None)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def _answer(self, handler: JsonHandler) -> None:
        request = handler.logged()
        with self._lock:
            self.requests.append(request)
            status = self.fail_status
        if request.path != "/metadata/identity/oauth2/token":
            handler.send_json(404, {"error": "not_found"})
            return
        if request.headers.get("metadata") != "true":
            handler.send_json(400, {"error": "invalid_request", "error_description": "Metadata"})
            return
        if status is not None:
            handler.send_json(status, {"error": "unavailable", "error_description": "injected"})
            return
        token = f"mi-token-{uuid.uuid4().hex}"
        with self._lock:
            self.issued.add(token)
        now = int(time.time())
        handler.send_json(
            200,
            {
                "access_token": token,
                "client_id": "00000000-0000-0000-0000-000000000001",
                "expires_in": "3600",
                "expires_on": str(now + 3600),
                "ext_expires_in": "3600",
                "not_before": str(now),
                "resource": request.query.get("resource", [""])[0],
                "token_type": "Bearer",
            },
        )

    def _handler_class(self) -> type[JsonHandler]:
        imds = self

        class Handler(JsonHandler):
            def do_GET(self) -> None:
                imds._answer(self)

        return Handler


@contextmanager
def open_fake_imds() -> Iterator[FakeImds]:
    imds = FakeImds()
    with serving(imds._server):
        yield imds


#: What the Azure SDK reads from the environment: cleared so a test's credential is the fake's.
AZURE_ENV = (
    "AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_USERNAME", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_AUTHORITY_HOST", "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER", "MSI_ENDPOINT", "MSI_SECRET", "AZURE_TOKEN_CREDENTIALS",
    "AZURE_KEY_VAULT_NAME", "AZURE_KEY_VAULT_URL",
)  # fmt: skip

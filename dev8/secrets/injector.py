"""The injector: turn fetched secrets into the files git, gh, Copilot, ssh and shells read.

A role that is absent or failed (``None``) leaves its files exactly as they are: the last good
files stay in place, and nothing dev8 did not write is ever removed.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from pathlib import Path, PurePosixPath

import attrs
import structlog
import trio

from actors import Event
from dev8.secrets.atomic import (
    Owner,
    atomic_write,
    fix_metadata,
    needs_metadata_fix,
    open_dir,
    read_existing,
    remove_stale_temps,
    write_atomic,
)
from dev8.secrets.custom_env import parse_custom_env
from dev8.secrets.errors import SecretInputError
from dev8.secrets.events import SecretInputRefused
from dev8.secrets.providers import SecretValue
from dev8.secrets.render import (
    PROFILE_HOOK,
    SSH_KEY_FILE_NAMES,
    normalize_key_text,
    public_key_line,
    render_authorized_keys,
    render_copilot_hosts,
    render_derived_public_key,
    render_env_file,
    render_gh_hosts,
    render_git_credentials,
    render_gitconfig,
    ssh_key_type,
)
from dev8.secrets.settings import SecretsConfig

log = structlog.get_logger(__name__)

#: The profile.d file name that makes login shells load the env file.
PROFILE_HOOK_NAME = "dev8-secrets.sh"


@attrs.frozen
class InjectionResult:
    """What one injection did; paths are absolute. Durations are wall-clock seconds."""

    written: tuple[Path, ...] = ()
    fixed: tuple[Path, ...] = ()
    unchanged: tuple[Path, ...] = ()
    #: (path, error class) of files that could not be written; their old content stays. Bad
    #: input (a user's file dev8 will not read or rewrite, a secret it cannot parse) has the
    #: :class:`SecretInputError` reason as its class: ``too_large``, ``wrong_owner``, ...
    failed: tuple[tuple[Path, str], ...] = ()
    duration: float = 0.0
    #: Everything refused in this injection (files and custom environment variables), as
    #: published: what a counter of bad input counts.
    refused: tuple[SecretInputRefused, ...] = ()

    @property
    def changed(self) -> tuple[Path, ...]:
        return self.written + self.fixed


@attrs.frozen
class _Planned:
    role: str
    parts: tuple[str, ...]
    name: str
    mode: int
    render: Callable[[str | None], str] = attrs.field(repr=False)


class Injector:
    """Renders and writes the workspace user's credential files under ``home``."""

    def __init__(
        self,
        *,
        home: str | os.PathLike[str],
        owner: Owner | None = None,
        github_host: str = "github.com",
        github_user: str | None = None,
        git_user_name: str | None = None,
        git_user_email: str | None = None,
        env_file: str = ".config/dev8/secrets.env",
        profile_dir: str | os.PathLike[str] | None = None,
        publish: Callable[[Event], object] | None = None,
    ) -> None:
        self.home = Path(home)
        self.owner = owner
        self.github_host = github_host
        self.github_user = github_user
        self.git_user_name = git_user_name
        self.git_user_email = git_user_email
        self.env_file = PurePosixPath(env_file)
        self.profile_dir = Path(profile_dir) if profile_dir is not None else None
        self._swept: set[tuple[str, ...]] = set()
        self._publish = publish
        self._custom_env: Mapping[str, str] = {}
        self._refused: list[SecretInputRefused] = []

    @classmethod
    def from_config(
        cls,
        config: SecretsConfig,
        *,
        home: str | os.PathLike[str],
        owner: Owner | None,
        publish: Callable[[Event], object] | None = None,
    ) -> Injector:
        return cls(
            home=home,
            owner=owner,
            github_host=config.github_host,
            github_user=config.github_user,
            git_user_name=config.git_user_name,
            git_user_email=config.git_user_email,
            env_file=config.env_file,
            profile_dir=config.profile_dir,
            publish=publish,
        )

    @property
    def env_file_path(self) -> Path:
        """The env file the user's login shells load. Services never read it: the user can edit
        it, and some services run as root (see :meth:`custom_env`)."""
        return self.home / self.env_file

    def custom_env(self) -> dict[str, str]:
        """The custom environment variables as last fetched and checked, for the services that
        run as the workspace user ({} before the secret was ever fetched)."""
        return dict(self._custom_env)

    def _expected_uid(self) -> int:
        """Who the files dev8 merges into must belong to (a hard link to root's is refused)."""
        if self.owner is not None and os.geteuid() == 0:
            return self.owner.uid
        return os.geteuid()

    def _refuse(self, role: str, item: str, reason: str) -> None:
        event = SecretInputRefused(source="dev8/secrets", role=role, item=item, reason=reason)
        self._refused.append(event)
        log.warning("secrets.input_refused", role=role, item=item, reason=reason)
        if self._publish is None:
            return
        try:
            trio.lowlevel.current_task()
        except RuntimeError:  # a worker thread (or no trio at all): hand it to the loop
            try:
                trio.from_thread.run_sync(self._publish, event)
            except RuntimeError:  # a plain synchronous caller
                self._publish(event)
            return
        self._publish(event)

    def inject(self, secrets: Mapping[str, SecretValue | None]) -> InjectionResult:
        """Write every file whose content or mode must change. Blocking, a few ms."""
        start = time.perf_counter()
        written: list[Path] = []
        fixed: list[Path] = []
        unchanged: list[Path] = []
        failed: list[tuple[Path, str]] = []
        self._refused = []
        with ExitStack() as stack:
            dirs: dict[tuple[str, ...], int] = {}
            to_sync: set[tuple[str, ...]] = set()
            for item in self._plan(secrets):
                path = self.home.joinpath(*item.parts, item.name)
                try:
                    if item.parts not in dirs:
                        dirs[item.parts] = stack.enter_context(
                            open_dir(self.home, item.parts, owner=self.owner, enforce_leaf=True)
                            if item.parts
                            else open_dir(self.home, enforce_leaf=False)
                        )
                        if item.parts not in self._swept:
                            remove_stale_temps(dirs[item.parts])
                            self._swept.add(item.parts)
                    outcome = self._apply(dirs[item.parts], item)
                except SecretInputError as e:
                    failed.append((path, e.reason))
                    self._refuse(item.role, str(path), e.reason)
                    continue
                except (OSError, ValueError) as e:
                    failed.append((path, _error_class(e)))
                    log.warning("secrets.inject.failed", path=str(path), error=_error_class(e))
                    continue
                {"written": written, "fixed": fixed, "unchanged": unchanged}[outcome].append(path)
                if outcome == "written":
                    to_sync.add(item.parts)
            for parts in to_sync:  # one fsync per directory makes all its renames durable
                try:
                    os.fsync(dirs[parts])
                except OSError as e:
                    log.warning("secrets.inject.dir_sync_failed", dir="/".join(parts) or ".",
                                error=_error_class(e))  # fmt: skip
        if self.profile_dir is not None and any(p == self.env_file_path for p in written):
            self._write_profile_hook()
        result = InjectionResult(
            tuple(written), tuple(fixed), tuple(unchanged), tuple(failed),
            time.perf_counter() - start, tuple(self._refused),
        )  # fmt: skip
        log.info(
            "secrets.injected",
            written=[str(p) for p in result.written],
            fixed=len(result.fixed),
            unchanged=len(result.unchanged),
            failed=len(result.failed),
            duration_ms=round(result.duration * 1000, 3),
        )
        return result

    def _apply(self, dir_fd: int, item: _Planned) -> str:
        # The whole file, the user's and no one else's, or nothing: never rewritten from a part.
        existing = read_existing(dir_fd, item.name, owner_uid=self._expected_uid())
        old_text = existing.data.decode("utf-8", "surrogateescape") if existing else None
        try:
            new_data = item.render(old_text).encode("utf-8", "surrogateescape")
        except RecursionError:  # YAML or JSON nested beyond what a parser can take
            raise SecretInputError(item.name, "too_deeply_nested") from None
        if existing is not None and existing.data == new_data:
            if needs_metadata_fix(existing, mode=item.mode, owner=self.owner):
                fix_metadata(dir_fd, item.name, mode=item.mode, owner=self.owner)
                return "fixed"
            return "unchanged"
        write_atomic(dir_fd, item.name, new_data, mode=item.mode, owner=self.owner, sync_dir=False)
        return "written"

    def _plan(self, secrets: Mapping[str, SecretValue | None]) -> list[_Planned]:
        def value(role: str) -> str | None:
            secret = secrets.get(role)
            return secret.value if secret is not None else None

        plan: list[_Planned] = []
        host = self.github_host
        token = value("github_token")
        if token is not None and token.strip():
            tok = token.strip()
            user = self.github_user or "x-access-token"
            plan.append(
                _Planned("github_token", (), ".git-credentials", 0o600,
                         lambda old: render_git_credentials(old, host=host, user=user, token=tok))
            )  # fmt: skip
            plan.append(
                _Planned("github_token", (".config", "gh"), "hosts.yml", 0o600,
                         lambda old: render_gh_hosts(old, host=host, token=tok,
                                                     user=self.github_user))
            )  # fmt: skip
        if token is not None or self.git_user_name or self.git_user_email:
            helper = token is not None and bool(token.strip())
            plan.append(
                _Planned("github_token", (), ".gitconfig", 0o600,
                         lambda old: render_gitconfig(old, host=host, user_name=self.git_user_name,
                                                      user_email=self.git_user_email,
                                                      credential_helper=helper))
            )  # fmt: skip
        copilot = value("copilot_token")
        if copilot is not None and copilot.strip():
            ctok = copilot.strip()
            plan.append(
                _Planned("copilot_token", (".config", "github-copilot"), "hosts.json", 0o600,
                         lambda old: render_copilot_hosts(old, host=host, token=ctok,
                                                          user=self.github_user))
            )  # fmt: skip
        plan.extend(self._plan_ssh(value("ssh_private_key"), value("ssh_public_key")))
        custom = value("custom_env_vars")
        if custom is not None:
            plan.append(self._plan_custom_env(custom))
        return plan

    def _plan_custom_env(self, secret: str) -> _Planned:
        """Check the variables now (services get them from memory), then write the env file."""
        *parts, name = self.env_file.parts
        try:
            checked = parse_custom_env(secret)
        except SecretInputError as e:
            reason = e.reason

            def refuse(_old: str | None) -> str:  # the file and the values in memory stay
                raise SecretInputError(name, reason)

            return _Planned("custom_env_vars", tuple(parts), name, 0o600, refuse)
        for refused in checked.refused:
            self._refuse("custom_env_vars", refused.name, refused.reason)
        self._custom_env = dict(checked.variables)
        text = render_env_file(checked.variables)
        return _Planned("custom_env_vars", tuple(parts), name, 0o600, lambda _old: text)

    def _plan_ssh(self, private: str | None, public: str | None) -> list[_Planned]:
        private = normalize_key_text(private) if private and private.strip() else None
        public = normalize_key_text(public) if public and public.strip() else None
        key_type = ssh_key_type(private, public)
        base = SSH_KEY_FILE_NAMES.get(key_type or "")
        plan: list[_Planned] = []
        if private is not None and base is not None:
            plan.append(_Planned("ssh_private_key", (".ssh",), base, 0o600, lambda _old: private))
        line = public_key_line(private, public)
        if line is None:
            return plan
        if base is not None:
            # Without a public key secret (absent, or its fetch failed) a .pub that already holds
            # the key stays as it is: a failed fetch changes no file.
            pub_text = public
            plan.append(
                _Planned("ssh_public_key", (".ssh",), base + ".pub", 0o644,
                         lambda old: pub_text if pub_text is not None
                         else render_derived_public_key(old, line=line))
            )  # fmt: skip
        plan.append(
            _Planned("ssh_public_key", (".ssh",), "authorized_keys", 0o600,
                     lambda old: render_authorized_keys(old, public_line=line))
        )  # fmt: skip
        return plan

    def _write_profile_hook(self) -> None:
        assert self.profile_dir is not None
        text = PROFILE_HOOK.format(env_file=self.env_file.as_posix())
        try:
            atomic_write(self.profile_dir / PROFILE_HOOK_NAME, text.encode(), mode=0o644)
        except OSError as e:
            # Without root (a local run) login shells simply do not get the hook.
            log.info("secrets.profile_hook_skipped", error=_error_class(e))


def _error_class(error: BaseException) -> str:
    if isinstance(error, OSError) and error.errno is not None:
        return errno.errorcode.get(error.errno, type(error).__name__)
    return type(error).__name__

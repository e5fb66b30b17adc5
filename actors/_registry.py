"""A registry by actor path, so that a caller holds an address, not an object.

A path (``dev8/services/ssh``) names a place in the tree; the actor living there registers its
mailbox when it is ready and unregisters when it ends, so a restarted actor is reachable at the
same path and a message to a path with no live actor fails at once with ``ActorNotFound``. There
is no global registry: whoever builds the tree makes one and hands it down.
"""

from __future__ import annotations

from typing import Any

import attrs

from ._mailbox import ActorNotFound, Mailbox


class PathTaken(ValueError):
    def __init__(self, path: str) -> None:
        super().__init__(f"a live actor is already registered at {path}")
        self.path = path


class Registry:
    """Live actors' mailboxes by path."""

    def __init__(self) -> None:
        self._mailboxes: dict[str, Mailbox[Any]] = {}

    def register(self, path: str, mailbox: Mailbox[Any]) -> None:
        current = self._mailboxes.get(path)
        if current is not None and current is not mailbox and not current.closed:
            raise PathTaken(path)
        self._mailboxes[path] = mailbox

    def unregister(self, path: str, mailbox: Mailbox[Any]) -> None:
        """Forget ``mailbox`` at ``path`` (and only it: a newer incarnation stays registered)."""
        if self._mailboxes.get(path) is mailbox:
            del self._mailboxes[path]

    def whereis(self, path: str) -> Mailbox[Any]:
        """The live mailbox at ``path``; ``ActorNotFound`` if none."""
        mailbox = self._mailboxes.get(path)
        if mailbox is None or mailbox.closed:
            raise ActorNotFound(path)
        return mailbox

    def paths(self) -> list[str]:
        return sorted(path for path, mailbox in self._mailboxes.items() if not mailbox.closed)

    def ref(self, path: str) -> ActorRef:
        return ActorRef(self, path)


@attrs.frozen
class Call:
    """A ``call``'s envelope in an ``Actor``'s mailbox."""

    message: Any
    reply: Any  # Reply[Any]; kept loose to stay a plain value type


@attrs.frozen
class Cast:
    """A ``cast``'s envelope in an ``Actor``'s mailbox."""

    message: Any


@attrs.frozen
class ActorRef:
    """The address of an actor: a path resolved through a registry at each message.

    It stays valid across the actor's restarts; between incarnations messages fail with
    ``ActorNotFound`` instead of waiting.
    """

    registry: Registry = attrs.field(repr=False, eq=False)
    path: str

    @property
    def alive(self) -> bool:
        try:
            self.registry.whereis(self.path)
        except ActorNotFound:
            return False
        return True

    async def call(self, message: Any, *, timeout: float) -> Any:
        """Ask and wait for the answer (``handle_call``'s value, or the error it refused with).

        Raises ``ActorNotFound``, ``MailboxFull``, ``ActorExited`` (it ended before answering,
        with its reason) or ``CallTimeout``; never hangs past ``timeout``.
        """
        mailbox = self.registry.whereis(self.path)
        return await mailbox.call(lambda reply: Call(message, reply), timeout=timeout)

    def cast(self, message: Any) -> None:
        """Deliver without waiting; ``ActorNotFound`` or ``MailboxFull`` if it can't."""
        self.registry.whereis(self.path).put_nowait(Cast(message))

    def info(self, message: Any) -> None:
        """Deliver to ``handle_info`` (a notice: no answer, bounded like a cast)."""
        self.registry.whereis(self.path).put_nowait(message)

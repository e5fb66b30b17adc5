"""The API's entry point: the thin front, with the Quart-Trio app built behind it on the first
request that needs it (so ``dev8 run`` answers its probes before Quart is imported)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from dev8.api._access import AccessPolicy
from dev8.api._front import ApiFront, PolledRoutes
from dev8.control import Control


def create_app(
    control: Control,
    *,
    token: str | None = None,
    open_changes: bool = True,
    chaos: bool = False,
    allowed_hosts: Iterable[str] | None = None,
    allowed_origins: Iterable[str] = (),
) -> ApiFront:
    """The API as an ASGI app; the options are ``dev8.api._app.create_app``'s."""
    hosts = None if allowed_hosts is None else tuple(allowed_hosts)
    origins = tuple(allowed_origins)
    policy = AccessPolicy.build(
        token=token, open_changes=open_changes, allowed_hosts=hosts, allowed_origins=origins
    )

    def build(polled: PolledRoutes) -> Any:
        from dev8.api._app import create_app as create_quart_app  # noqa: PLC0415 - see the docstring

        return create_quart_app(
            control,
            token=token,
            open_changes=open_changes,
            chaos=chaos,
            allowed_hosts=hosts,
            allowed_origins=origins,
            polled=polled,
        )

    return ApiFront(control, policy, PolledRoutes(control), build)

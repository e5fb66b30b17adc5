"""Fixtures shared by the end-to-end tests (see dev8_harness.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from dev8_harness import free_port, kill_marked


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

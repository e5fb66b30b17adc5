"""dev8: the workspace supervisor that runs as PID 1 in every workspace container."""

import functools


@functools.cache
def _version() -> str:
    # importlib.metadata costs tens of milliseconds to import: asked for, not at start-up.
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version("dev8")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0+unknown"


def __getattr__(name: str) -> str:  # no `typing` here: `dev8 run` catches signals after this
    if name == "__version__":
        return _version()
    raise AttributeError(f"module 'dev8' has no attribute {name!r}")

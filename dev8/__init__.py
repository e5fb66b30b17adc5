"""dev8: the workspace supervisor that runs as PID 1 in every workspace container."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dev8")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

"""dev8: the workspace supervisor that runs as PID 1 in every workspace container."""

# The one place the version is written (pyproject.toml reads it from here): a literal, so
# /status does not import importlib.metadata (about 10 ms) to answer its first request.
__version__ = "0.1.0"

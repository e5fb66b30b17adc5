"""The management API: health for the platform's agent, status and events for everyone else."""

from dev8.api._compose import create_app as create_app
from dev8.api._server import ApiBindError as ApiBindError
from dev8.api._server import BoundApi as BoundApi
from dev8.api._server import bind_api as bind_api
from dev8.api._server import serve_api as serve_api

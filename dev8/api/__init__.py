"""The management API: health for the platform's agent, status and events for everyone else."""

from ._front import create_app as create_app
from ._server import ApiBindError as ApiBindError
from ._server import BoundApi as BoundApi
from ._server import bind_api as bind_api
from ._server import serve_api as serve_api

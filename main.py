"""Run the service: `python main.py` (host and port from NN_HOST / NN_PORT) or `uvicorn main:app`.

`python main.py worker` starts a training worker for NN_BACKEND=redis (an RQ worker on NN_REDIS_QUEUE).
"""

import sys

import uvicorn

from api.app import create_app
from api.backend import DataDirInUse
from api.errors import StoreUnavailable
from api.server import configure_logging, uvicorn_options
from api.settings import get_settings

try:
    app = create_app()
except StoreUnavailable as exc:  # e.g. a damaged database: one line that says how to recover, not a traceback
    sys.exit(f"error: {exc}")

if __name__ == "__main__":
    settings = get_settings()
    configure_logging(settings)
    if sys.argv[1:2] == ["worker"]:
        sys.exit(app.state.backend.run_worker())
    try:
        app.state.backend.check_exclusive()  # one line, not uvicorn's traceback of a failed lifespan
    except DataDirInUse as exc:
        sys.exit(f"error: {exc}")
    uvicorn.run(app, **uvicorn_options(settings))  # header timeout, keep-alive timeout, connection cap

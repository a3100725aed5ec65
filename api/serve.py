"""Start the service or a worker: `nn-service` once the package is installed (`pip install .`), or
`python main.py` in a checkout; both run `main`. `nn-service worker` (or `python main.py worker`) starts a
training worker for NN_BACKEND=redis (an RQ worker on NN_REDIS_QUEUE)."""

import argparse
import sys

import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError

from api.app import create_app
from api.backend import DataDirInUse
from api.errors import StoreUnavailable
from api.server import configure_logging, uvicorn_options
from api.settings import get_settings


def build_app() -> FastAPI:
    """The app, or exit with one line that says how to recover (a damaged database, a setting that cannot be
    read), not a traceback."""
    try:
        return create_app()
    except StoreUnavailable as exc:
        sys.exit(f"error: {exc}")
    except ValidationError as exc:  # a setting of the wrong kind or out of range: name the variable
        sys.exit("error: " + "; ".join(f"NN_{'_'.join(map(str, e['loc'])).upper()}={e.get('input')!r}: {e['msg']}"
                                       for e in exc.errors()))
    except ValueError as exc:  # NN_API_KEYS, NN_TENANCY, NN_REDIS_URL that cannot be used (the message names which)
        sys.exit(f"error: {exc}")


def parse_role(argv: list[str], prog: str | None = None) -> str:
    """'api' or 'worker' from the command line; --help prints the usage and a mistyped role (`wroker`) is an error
    with exit status 2, both before anything is built or created: either used to start an API server."""
    parser = argparse.ArgumentParser(
        prog=prog, description="The neural-network training service: the HTTP API, or a training worker.",
        epilog="Settings come from NN_* environment variables (README: Settings), e.g. NN_HOST, NN_PORT, NN_DATA_DIR, "
               "NN_BACKEND.")
    parser.add_argument("role", nargs="?", choices=["api", "worker"], default="api",
                        help="api (the default): serve the HTTP API on NN_HOST:NN_PORT (127.0.0.1:8000), with "
                             "NN_WORKERS training workers beside it on SQLite; worker: a training worker for "
                             "NN_BACKEND=redis, taking jobs from NN_REDIS_QUEUE")
    return parser.parse_args(argv).role


def run(app: FastAPI, role: str) -> int | str | None:
    """Serve `app` with the header and body timeouts, keep-alive timeout and connection cap (`api/server.py`),
    or, for the role 'worker', run a training worker. Returns the process's exit status."""
    settings = get_settings()
    configure_logging(settings)
    if role == "worker":
        return app.state.backend.run_worker()
    try:
        app.state.backend.check_exclusive()  # one line, not uvicorn's traceback of a failed lifespan
    except DataDirInUse as exc:
        return f"error: {exc}"
    StoppingServer(uvicorn.Config(app, **uvicorn_options(settings)), app).run()
    return 0


class StoppingServer(uvicorn.Server):
    """uvicorn's server, telling the app when a signal asks it to stop: uvicorn then waits for every open
    connection to close, and an event stream would hold it open as long as its job runs. Streams read
    ``app.state.stopping`` and end with a 'shutdown' event that tells their client to reconnect."""

    def __init__(self, config: uvicorn.Config, app: FastAPI):
        super().__init__(config)
        self.app = app

    def handle_exit(self, sig: int, frame) -> None:
        self.app.state.stopping = True
        super().handle_exit(sig, frame)


def main(argv: list[str] | None = None, prog: str | None = None) -> int | str | None:
    """The `nn-service` command (pyproject.toml's [project.scripts]) and `python main.py`: the arguments are read
    before the app is built, so `--help` creates no data folder."""
    role = parse_role(sys.argv[1:] if argv is None else argv, prog)
    return run(build_app(), role)

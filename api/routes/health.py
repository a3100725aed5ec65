from functools import lru_cache

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse

from api import __version__, auth
from api.routes import get_service
from api.schemas import Health
from api.services import Service
from api.settings import Settings

router = APIRouter(tags=["health"])


@router.get("/", include_in_schema=False)
def root() -> RedirectResponse:
    return RedirectResponse("/docs")


@router.get("/health", response_model=Health, summary="Service status, backend, workers and version")
def health(request: Request, service: Service = Depends(get_service)) -> Health:
    """Needs no key (load balancers and probes send none). Under NN_TENANCY, `queued_jobs` and `queue_length`
    count every tenant's jobs, so they are null unless the request carries an `admin` key (`Authorization:
    Bearer` or `X-API-Key`, as on other routes); a missing or wrong key is not refused here."""
    healthy = service.healthy()
    backend = request.app.state.backend
    status = backend.status(healthy)
    if not sees_every_tenant(request, request.app.state.settings):
        status.update(queued_jobs=None, queue_length=None)
    return Health(status="ok" if healthy else "degraded", backend=backend.name, version=__version__, **status)


def sees_every_tenant(request: Request, settings: Settings) -> bool:
    """Whether this request may see figures of every tenant: always without tenancy, else with an admin key.
    /health is open, so no middleware has looked at its key: this reads it as AccessControl does."""
    if not settings.tenancy:
        return True
    key = auth.key_from_headers(dict(request.scope["headers"]))
    entry = auth.find_key(key, _keys(settings.api_keys)) if key is not None else None
    return entry is not None and entry.scope == "admin"


@lru_cache(maxsize=4)
def _keys(api_keys: str) -> list[auth.ApiKey]:
    return auth.parse_keys(api_keys)  # checked at start-up (api/auth.py), so it parses here

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse

from api import __version__
from api.routes import get_service
from api.schemas import Health
from api.services import Service

router = APIRouter(tags=["health"])


@router.get("/", include_in_schema=False)
def root() -> RedirectResponse:
    return RedirectResponse("/docs")


@router.get("/health", response_model=Health, summary="Service status, backend, workers and version")
def health(request: Request, service: Service = Depends(get_service)) -> Health:
    healthy = service.healthy()
    backend = request.app.state.backend
    return Health(status="ok" if healthy else "degraded", backend=backend.name, version=__version__,
                  **backend.status(healthy))

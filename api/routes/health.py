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
    status = "ok" if service.healthy() else "degraded"
    pool = request.app.state.pool
    queue = service.queue_stats() if status == "ok" else {}
    workers = service.settings.workers if service.settings.backend == "sqlite" else queue.get("workers_alive", 0)
    return Health(status=status, backend=service.settings.backend, workers=workers,
                  workers_alive=queue.get("workers_alive", pool.alive if pool else 0), queued_jobs=queue.get("queued_jobs"),
                  queue_length=queue.get("queue_length"), version=__version__)

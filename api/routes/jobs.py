import asyncio
import json
import time
from typing import AsyncIterator, Literal

import anyio
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from api.auth import creator_name, visible_owner
from api.errors import TooManyStreams
from api.json_body import JsonBodyRoute
from api.routes import get_service
from api.paging import JobsPublic, page
from api.schemas import JobCreate, JobPublic, ModelProgress, Progress
from api.services import Service
from api.storage.base import TERMINAL

router = APIRouter(prefix="/jobs", tags=["jobs"], route_class=JsonBodyRoute)
model_router = APIRouter(prefix="/models/{model_id}", tags=["jobs"], route_class=JsonBodyRoute)

SSE_INTERVAL = 0.2  # seconds between looks at the store while streaming (keep-alive and maximum: settings)
STREAM_THREADS = 4  # worker threads all streams of a process share for those looks


@model_router.post("/training-jobs", status_code=202, response_model=JobPublic,
                   summary="Submit a training job (waits in 'buffering' until min_samples are buffered)")
def submit_job(model_id: str, body: JobCreate, response: Response, owner: str | None = Depends(creator_name),
               viewer: str | None = Depends(visible_owner), service: Service = Depends(get_service)) -> JobPublic:
    job = service.submit_job(model_id, body, owner, viewer)
    response.headers["Location"] = f"/jobs/{job.job_id}"
    return JobPublic.from_record(job)


@model_router.get("/jobs", response_model=JobsPublic, summary="The model's training jobs, newest first")
def list_jobs(model_id: str, offset: int = Query(0, ge=0, le=2**62, description="Jobs to skip."),
              limit: int = Query(50, ge=1, le=500, description="Jobs per page."),
              owner: str | None = Depends(visible_owner), service: Service = Depends(get_service)) -> Response:
    return page(lambda at, n: service.list_jobs(model_id, at, n, owner), JobPublic.from_record, lambda r: r.job_id,
                offset, limit, service.settings.max_list_bytes)


@model_router.get("/progress", response_model=ModelProgress, summary="Progress of the model's latest job")
def model_progress(model_id: str, owner: str | None = Depends(visible_owner),
                   service: Service = Depends(get_service)) -> ModelProgress:
    job = service.latest_job(model_id, owner)
    return ModelProgress(model_id=model_id, job_id=job.job_id, status=job.status,
                         progress=Progress(**job.progress) if job.progress else None)


@router.get("", response_model=JobsPublic, summary="Jobs of every model, newest first, filtered by status, model and kind")
def list_all_jobs(status: Literal["buffering", "queued", "running", "cancelling", "succeeded", "failed", "cancelled"] | None =
                  Query(None, description="Only jobs in this status."),
                  model_id: str | None = Query(None, min_length=1, max_length=64, description="Only jobs of this model id (deleted "
                                                                               "models' jobs included)."),
                  kind: Literal["training", "search"] | None = Query(None, description="Only training or search jobs."),
                  offset: int = Query(0, ge=0, le=2**62, description="Jobs to skip."),
                  limit: int = Query(50, ge=1, le=500, description="Jobs per page."),
                  owner: str | None = Depends(visible_owner), service: Service = Depends(get_service)) -> Response:
    return page(lambda at, n: service.list_all_jobs(at, n, status=status, model_id=model_id, kind=kind, owner=owner),
                JobPublic.from_record, lambda r: r.job_id, offset, limit, service.settings.max_list_bytes)


@router.get("/{job_id}", response_model=JobPublic, summary="Status, progress, history and result of a job")
def get_job(job_id: str, history_from: int = Query(0, ge=0, le=2**62, description=(
                "Return the history from this entry on: a client that has the first N entries (a dashboard "
                "following a long job) asks for the rest with history_from=N instead of all of it again.")),
            service: Service = Depends(get_service)) -> JobPublic:
    return JobPublic.from_record(service.get_job(job_id, history_from))


@router.post("/{job_id}/cancel", response_model=JobPublic, summary="Cancel a job; it stops within one batch")
def cancel_job(job_id: str, service: Service = Depends(get_service)) -> JobPublic:
    return JobPublic.from_record(service.cancel_job(job_id))


def _event(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


class StreamSlots:
    """At most NN_MAX_STREAMS event streams at once in this process; each open one holds a slot. Their
    looks at the store share STREAM_THREADS threads, so open streams never starve requests of the
    thread pool (a stream just looks less often when the machine is busy)."""

    def __init__(self, limit: int):
        self.limit, self.open = limit, 0
        self.threads = anyio.CapacityLimiter(STREAM_THREADS)

    def take(self) -> None:
        if self.open >= self.limit:
            raise TooManyStreams(self.limit)
        self.open += 1

    def give_back(self) -> None:
        self.open -= 1


class SlotStreamingResponse(StreamingResponse):
    """Gives its slot back however the response ends (finished, client gone, or never started)."""

    def __init__(self, content, slots: StreamSlots, **kwargs):
        super().__init__(content, **kwargs)
        self.slots = slots

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.slots.give_back()


def stream_slots(request: Request) -> StreamSlots:
    state = request.app.state
    if getattr(state, "stream_slots", None) is None:
        state.stream_slots = StreamSlots(state.settings.max_streams)
    return state.stream_slots


@router.get("/{job_id}/events", summary="Server-Sent Events: one 'progress' event per update, then 'end' (or 'timeout')",
            response_class=StreamingResponse, responses={200: {"content": {"text/event-stream": {}}}},
            description="A stream sends a keep-alive comment every NN_STREAM_KEEPALIVE_SECONDS while the job is quiet "
                        "and ends after NN_STREAM_MAX_SECONDS with a 'timeout' event, or with a 'shutdown' event when "
                        "the server is stopping (EventSource reconnects by itself). At most NN_MAX_STREAMS streams are "
                        "open at once per server: past that, 503 with Retry-After.")
async def job_events(job_id: str, request: Request, service: Service = Depends(get_service)) -> StreamingResponse:
    first = await run_in_threadpool(service.get_job, job_id, None)  # 404 before the stream starts
    settings = request.app.state.settings
    slots = stream_slots(request)
    slots.take()  # 503 when every slot is taken
    keepalive, ends_at = settings.stream_keepalive_seconds, time.monotonic() + settings.stream_max_seconds

    async def stream() -> AsyncIterator[str]:
        job, last, quiet = first, None, 0.0
        while True:
            if job.status in TERMINAL:  # the whole record, history included, once; the polls below leave it out
                job = await anyio.to_thread.run_sync(service.get_job, job_id, limiter=slots.threads)
                yield _event("end", JobPublic.from_record(job).model_dump(mode="json"))
                return
            public = JobPublic.from_record(job)
            state = (job.status, job.progress, job.epochs_done)
            if state != last:
                last, quiet = state, 0.0
                yield _event("progress", {"job_id": job.job_id, "status": job.status, "epochs_completed": job.epochs_done,
                                          "progress": public.progress.model_dump() if public.progress else None})
            elif quiet >= keepalive:
                quiet = 0.0
                yield ": keep-alive\n\n"
            if getattr(request.app.state, "stopping", False):  # the server stops once its streams have ended
                yield _event("shutdown", {"job_id": job.job_id, "status": job.status, "detail": (
                    "the server is stopping; reconnect (to it once restarted, or to another replica) to follow the "
                    "job further")})
                return
            if time.monotonic() >= ends_at:
                yield _event("timeout", {"job_id": job.job_id, "status": job.status, "detail": (
                    f"the stream was open {settings.stream_max_seconds:g} s (NN_STREAM_MAX_SECONDS); reconnect to "
                    "follow the job further")})
                return
            await asyncio.sleep(min(SSE_INTERVAL, keepalive))
            quiet += min(SSE_INTERVAL, keepalive)
            if await request.is_disconnected():
                return
            job = await anyio.to_thread.run_sync(service.get_job, job_id, None, limiter=slots.threads)

    return SlotStreamingResponse(stream(), slots, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

import asyncio
import json
from typing import AsyncIterator, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from api.auth import creator_name, visible_owner
from api.routes import get_service
from api.schemas import JobCreate, JobPublic, JobsPublic, ModelProgress, Progress
from api.services import Service
from api.storage.base import TERMINAL

router = APIRouter(prefix="/jobs", tags=["jobs"])
model_router = APIRouter(prefix="/models/{model_id}", tags=["jobs"])

SSE_INTERVAL = 0.2  # seconds between looks at the store while streaming
SSE_KEEPALIVE = 15.0  # seconds between comment lines on a quiet stream


@model_router.post("/training-jobs", status_code=202, response_model=JobPublic,
                   summary="Submit a training job (waits in 'buffering' until min_samples are buffered)")
def submit_job(model_id: str, body: JobCreate, response: Response, owner: str | None = Depends(creator_name),
               service: Service = Depends(get_service)) -> JobPublic:
    job = service.submit_job(model_id, body, owner)
    response.headers["Location"] = f"/jobs/{job.job_id}"
    return JobPublic.from_record(job)


@model_router.get("/jobs", response_model=JobsPublic, summary="The model's training jobs, newest first")
def list_jobs(model_id: str, offset: int = Query(0, ge=0, le=2**62, description="Jobs to skip."),
              limit: int = Query(50, ge=1, le=500, description="Jobs per page."),
              owner: str | None = Depends(visible_owner), service: Service = Depends(get_service)) -> JobsPublic:
    records, count = service.list_jobs(model_id, offset, limit, owner)
    return JobsPublic(data=[JobPublic.from_record(r) for r in records], count=count)


@model_router.get("/progress", response_model=ModelProgress, summary="Progress of the model's latest job")
def model_progress(model_id: str, owner: str | None = Depends(visible_owner),
                   service: Service = Depends(get_service)) -> ModelProgress:
    job = service.latest_job(model_id, owner)
    return ModelProgress(model_id=model_id, job_id=job.job_id, status=job.status,
                         progress=Progress(**job.progress) if job.progress else None)


@router.get("", response_model=JobsPublic, summary="Jobs of every model, newest first, filtered by status, model and kind")
def list_all_jobs(status: Literal["buffering", "queued", "running", "cancelling", "succeeded", "failed", "cancelled"] | None =
                  Query(None, description="Only jobs in this status."),
                  model_id: str | None = Query(None, max_length=64, description="Only jobs of this model id (deleted "
                                                                               "models' jobs included)."),
                  kind: Literal["training", "search"] | None = Query(None, description="Only training or search jobs."),
                  offset: int = Query(0, ge=0, le=2**62, description="Jobs to skip."),
                  limit: int = Query(50, ge=1, le=500, description="Jobs per page."),
                  owner: str | None = Depends(visible_owner), service: Service = Depends(get_service)) -> JobsPublic:
    records, count = service.list_all_jobs(offset, limit, status=status, model_id=model_id, kind=kind, owner=owner)
    return JobsPublic(data=[JobPublic.from_record(r) for r in records], count=count)


@router.get("/{job_id}", response_model=JobPublic, summary="Status, progress, history and result of a job")
def get_job(job_id: str, service: Service = Depends(get_service)) -> JobPublic:
    return JobPublic.from_record(service.get_job(job_id))


@router.post("/{job_id}/cancel", response_model=JobPublic, summary="Cancel a job; it stops within one batch")
def cancel_job(job_id: str, service: Service = Depends(get_service)) -> JobPublic:
    return JobPublic.from_record(service.cancel_job(job_id))


def _event(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


@router.get("/{job_id}/events", summary="Server-Sent Events: one 'progress' event per update, then 'end'",
            response_class=StreamingResponse, responses={200: {"content": {"text/event-stream": {}}}})
async def job_events(job_id: str, request: Request, service: Service = Depends(get_service)) -> StreamingResponse:
    first = await run_in_threadpool(service.get_job, job_id)  # 404 before the stream starts

    async def stream() -> AsyncIterator[str]:
        job, last, quiet = first, None, 0.0
        while True:
            public = JobPublic.from_record(job)
            if job.status in TERMINAL:
                yield _event("end", public.model_dump(mode="json"))
                return
            state = (job.status, job.progress, job.epochs_done)
            if state != last:
                last, quiet = state, 0.0
                yield _event("progress", {"job_id": job.job_id, "status": job.status, "epochs_completed": job.epochs_done,
                                          "progress": public.progress.model_dump() if public.progress else None})
            elif quiet >= SSE_KEEPALIVE:
                quiet = 0.0
                yield ": keep-alive\n\n"
            await asyncio.sleep(SSE_INTERVAL)
            quiet += SSE_INTERVAL
            if await request.is_disconnected():
                return
            job = await run_in_threadpool(service.get_job, job_id)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

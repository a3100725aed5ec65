from fastapi import APIRouter, Depends, Response

from api.auth import creator_name, visible_owner
from api.json_body import JsonBodyRoute
from api.routes import get_service
from api.schemas import JobPublic
from api.search_schemas import SearchCreate
from api.search import submit_search
from api.services import Service

router = APIRouter(prefix="/models/{model_id}", tags=["jobs"], route_class=JsonBodyRoute)


@router.post("/search-jobs", status_code=202, response_model=JobPublic,
             summary="Submit a hyper-parameter search (grid or random, k-fold or hold-out); its trials run in parallel")
def submit_search_job(model_id: str, body: SearchCreate, response: Response, owner: str | None = Depends(creator_name),
                      viewer: str | None = Depends(visible_owner), service: Service = Depends(get_service)) -> JobPublic:
    job = submit_search(service, model_id, body, owner, viewer)
    response.headers["Location"] = f"/jobs/{job.job_id}"
    return JobPublic.from_record(job)

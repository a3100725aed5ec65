from typing import Literal

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import FileResponse

from api.auth import creator_name, visible_owner
from api.dataset_service import DatasetService
from api.dataset_schemas import DatasetPublic, DatasetsPublic
from api.etag import tags
from api.schemas import DATASET_ID_PATTERN, IRIS_X, IRIS_Y

router = APIRouter(prefix="/datasets", tags=["datasets"])

BINARY = {"schema": {"type": "string", "format": "binary"}}
# CSV first: Swagger UI opens on the first media type, and one chosen after "Try it out" from multipart/form-data
# keeps the form's value in its text box (swagger-ui issue 10738), so a CSV or JSON example sent that way failed
FILE_BODY = {"requestBody": {"required": True, "content": {
    "text/csv": {"schema": {"type": "string"}, "example": "sepal_length,sepal_width,petal_length,petal_width,species\n"
                 + "".join(",".join(map(str, x + [y])) + "\n" for x, y in zip(IRIS_X, IRIS_Y))},
    "application/json": {"schema": {"type": "object", "required": ["inputs", "targets"], "properties": {
        "inputs": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
        "targets": {"type": "array", "items": {}}}}, "example": {"inputs": IRIS_X, "targets": IRIS_Y}},
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary", "description": "An .npz, .csv or .json file."}}}},
    "application/x-npz": BINARY,
    "application/octet-stream": BINARY,
}}}
Format = Literal["npz", "csv", "json"]


async def get_datasets(request: Request) -> DatasetService:  # async: no hop to a thread (api/routes/__init__.py)
    return request.app.state.service.datasets


async def file_options(format: Format | None = Query(None, description="npz, csv or json; default: from the Content-Type or "
                                                                   "file name, else from the file's first bytes."),
                 target: list[str] | None = Query(None, max_length=64, description=(
                     "CSV only: the target column(s), repeatable (?target=a&target=b); default: the last column."))) -> dict:
    return {"fmt": format, "targets": target}


@router.post("", status_code=201, response_model=DatasetPublic, openapi_extra=FILE_BODY,
             summary="Upload a dataset: NPZ (inputs, targets), CSV with a header row, or JSON for small data")
async def upload_dataset(request: Request, options: dict = Depends(file_options),
                         dtype: Literal["float32", "float64"] | None = Query(None, description=(
                             "Type the inputs are stored in; default float32 (float64 NPZ inputs stay float64).")),
                         name: str | None = Query(None, max_length=200, description="A name for people."),
                         dataset_id: str | None = Query(None, pattern=DATASET_ID_PATTERN,
                                                        description="Id of the new dataset; generated when absent."),
                         owner: str | None = Depends(creator_name),
                         datasets: DatasetService = Depends(get_datasets)) -> DatasetPublic:
    """The body is the file itself (`Content-Type: application/x-npz`, `text/csv` or `application/json`) or
    the multipart field `file` (the /docs file button). It streams to disk as it arrives, up to
    NN_MAX_DATASET_BYTES and NN_MAX_DATASET_ROWS; the dataset exists only once it is whole."""
    record = await datasets.create(request.stream(), request.headers.get("content-type", ""),
                                   request.headers.get("content-length"), dtype=dtype, name=name,
                                   dataset_id=dataset_id, owner=owner, **options)
    return DatasetPublic.from_record(record)


@router.get("", response_model=DatasetsPublic, summary="List datasets, oldest first")
def list_datasets(offset: int = Query(0, ge=0, le=2**62, description="Datasets to skip."),
                  limit: int = Query(50, ge=1, le=500, description="Datasets per page."),
                  viewer: str | None = Depends(visible_owner),
                  datasets: DatasetService = Depends(get_datasets)) -> DatasetsPublic:
    records, count = datasets.page(offset, limit, viewer)
    end = offset + len(records)
    return DatasetsPublic(data=[DatasetPublic.from_record(r) for r in records], count=count,
                          next_offset=end if end < count else None)


@router.get("/{dataset_id}", response_model=DatasetPublic, summary="Sizes, target summary and checksum of a dataset")
def get_dataset(dataset_id: str, viewer: str | None = Depends(visible_owner),
                datasets: DatasetService = Depends(get_datasets)) -> DatasetPublic:
    return DatasetPublic.from_record(datasets.get(dataset_id, viewer))


DOWNLOAD = {"responses": {200: {"content": {"application/x-npz": {}}},
                          304: {"description": "Not Modified: If-None-Match names the dataset's ETag"}}}


def _download(dataset_id: str, if_none_match: str | None, viewer: str | None, datasets: DatasetService) -> Response:
    record = datasets.get(dataset_id, viewer)
    etag = f'"{record.sha256}"'  # a dataset never changes: its checksum is its ETag, the same on every replica
    if if_none_match is not None and {etag, "*"} & set(tags(if_none_match)):
        return Response(status_code=304, headers={"ETag": etag})
    return FileResponse(datasets.path(dataset_id, viewer), media_type="application/x-npz", filename=f"{dataset_id}.npz",
                        headers={"ETag": etag})


@router.get("/{dataset_id}/download", response_class=FileResponse, openapi_extra=DOWNLOAD,
            summary="The dataset as an NPZ file (inputs, targets)")
def download_dataset(dataset_id: str, if_none_match: str | None = Header(None, description=(
                         "The ETag of an earlier download (the dataset's sha256, quoted): 304 with no body when it "
                         "matches.")),
                     viewer: str | None = Depends(visible_owner),
                     datasets: DatasetService = Depends(get_datasets)) -> Response:
    """The stored NPZ (byte ranges with `Range`). Its `ETag` is the dataset's `sha256` in quotes, so a client that
    keeps a copy sends it back in `If-None-Match` and gets a 304 instead of the file; HEAD answers the headers alone."""
    return _download(dataset_id, if_none_match, viewer, datasets)


@router.head("/{dataset_id}/download", include_in_schema=False)
def head_dataset_download(dataset_id: str, if_none_match: str | None = Header(None),
                          viewer: str | None = Depends(visible_owner),
                          datasets: DatasetService = Depends(get_datasets)) -> Response:
    return _download(dataset_id, if_none_match, viewer, datasets)


@router.delete("/{dataset_id}", status_code=204, summary="Delete a dataset (409 while a job or search uses it)")
def delete_dataset(dataset_id: str, viewer: str | None = Depends(visible_owner),
                   datasets: DatasetService = Depends(get_datasets)) -> Response:
    datasets.delete(dataset_id, viewer)
    return Response(status_code=204)

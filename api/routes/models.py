from typing import Literal

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from api import etag
from api.auth import creator_name, visible_owner
from api.errors import InvalidInput
from api.json_body import JsonBodyRoute, OrjsonResponse, dumps, read_json
from api.routes import get_service
from api.routes.datasets import FILE_BODY, file_options
from api.paging import ModelsPublic, page
from api.schemas import (BufferPublic, EvaluateRequest, EvaluateResponse, ModelCreate, ModelPublic,
                         IRIS_X, IRIS_Y, OutputRequest, OutputResponse, SamplesCreate, Weights)
from api.services import Service

router = APIRouter(prefix="/models", tags=["models"], route_class=JsonBodyRoute)

VERSION_QUERY = Query(None, ge=1, le=2**62, description="A kept version of the model (GET /models/{model_id}/versions) "
                                                     "to compute with instead of the current one, e.g. to compare old and new.")

NPZ_BODY = {"requestBody": {"content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    "multipart/form-data": {"schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}},
                                       "required": ["file"]}},
}, "required": True}}


@router.post("", status_code=201, response_model=ModelPublic, summary="Create a model from layer sizes or a layers list")
def create_model(body: ModelCreate, owner: str | None = Depends(creator_name),
                 service: Service = Depends(get_service)) -> ModelPublic:
    return ModelPublic.from_record(service.create_model(body, owner))


@router.get("", response_model=ModelsPublic, summary="List models, oldest first")
def list_models(offset: int = Query(0, ge=0, le=2**62, description="Models to skip."),
                limit: int = Query(50, ge=1, le=500, description="Models per page."),
                owner: str | None = Depends(visible_owner), service: Service = Depends(get_service)) -> Response:
    return page(lambda at, n: service.list_models(at, n, owner), ModelPublic.from_record, lambda r: r.model_id,
                offset, limit, service.settings.max_list_bytes)


@router.post("/import", status_code=201, response_model=ModelPublic, openapi_extra=NPZ_BODY,
             summary="Create a model from a .npz file (raw body or multipart field `file`)")
async def import_model(request: Request, model_id: str | None = Query(None, pattern=r"^[A-Za-z0-9_.-]{1,64}$",
                                                                      description="Id of the new model; generated when absent."),
                       owner: str | None = Depends(creator_name), service: Service = Depends(get_service)) -> ModelPublic:
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("file")
        data = await upload.read() if hasattr(upload, "read") else b""
    else:
        data = await request.body()
    return ModelPublic.from_record(await run_in_threadpool(service.import_model, data, model_id, owner))


@router.get("/{model_id}", response_model=ModelPublic, summary="Architecture, version, buffer size and latest job")
def get_model(model_id: str, request: Request, response: Response, viewer: str | None = Depends(visible_owner),
              service: Service = Depends(get_service)) -> ModelPublic:
    record = service.get_model(model_id, viewer)
    public = ModelPublic.from_record(record)
    current = etag.summary_etag(record, public.model_dump_json())
    if etag.none_match(request.headers.get("if-none-match"), current):
        return Response(status_code=304, headers={"ETag": current})
    response.headers["ETag"] = current
    return public


@router.delete("/{model_id}", status_code=204, summary="Delete a model, its buffer, and cancel its jobs")
def delete_model(model_id: str, service: Service = Depends(get_service)) -> Response:
    service.delete_model(model_id)
    return Response(status_code=204)


@router.post("/{model_id}/output", response_model=OutputResponse,
             summary="Outputs, predictions and, with targets, the cost and its gradients")
async def output(model_id: str, body: OutputRequest, version: int | None = VERSION_QUERY,
                 service: Service = Depends(get_service)) -> Response:
    # a small prediction by a cached network is computed on the event loop, the rest in a worker thread; both are
    # answered by orjson as built (the service builds the OutputResponse fields; pydantic does not check them again)
    result = await service.output_on_loop(model_id, body) if version is None else None
    if result is not None:  # a few rows: built on the loop
        return OrjsonResponse({name: result.get(name) for name in OutputResponse.model_fields})  # None where unset

    def answer() -> bytes:  # rendered in the thread too: a large answer's JSON held the event loop for a second
        result = service.output(model_id, body, version)
        return dumps({name: result.get(name) for name in OutputResponse.model_fields})

    return Response(await run_in_threadpool(answer), media_type="application/json")


@router.post("/{model_id}/evaluate", response_model=EvaluateResponse, summary="Loss and metrics on labelled data")
def evaluate(model_id: str, body: EvaluateRequest, version: int | None = VERSION_QUERY,
             viewer: str | None = Depends(visible_owner), service: Service = Depends(get_service)) -> dict:
    return service.evaluate(model_id, body, version, viewer)


@router.get("/{model_id}/weights", response_model=Weights, summary="Weights and biases of every layer")
def get_weights(model_id: str, request: Request, response: Response, version: int | None = Query(
        None, ge=1, le=2**62, description="A kept version (GET /models/{model_id}/versions) instead of the current one."),
        service: Service = Depends(get_service)) -> dict:
    return etag.weights(service, model_id, version, request.headers.get("if-none-match"), response)


@router.put("/{model_id}/weights", response_model=ModelPublic, summary="Replace every layer's weights and biases")
def set_weights(model_id: str, body: Weights, response: Response,
                if_match: str | None = Header(None, description="An ETag from GET /models/{model_id} (or its weights): "
                                                                "replace only that version, else 412."),
                service: Service = Depends(get_service)) -> ModelPublic:
    record = etag.set_weights_if_match(service, model_id, body, if_match)
    public = ModelPublic.from_record(record)
    response.headers["ETag"] = etag.summary_etag(record, public.model_dump_json())
    return public


SAMPLES_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": SamplesCreate.model_json_schema(),  # or {"dataset": "<dataset_id>"}
                         "example": {"inputs": IRIS_X, "targets": IRIS_Y}},
    **{media: body for media, body in FILE_BODY["requestBody"]["content"].items() if media != "application/json"}}}}


def _is_json(content_type: str) -> bool:
    media = content_type.split(";")[0].strip().lower()
    return not media or media == "application/json" or media.endswith("+json")


async def _json_body(request: Request, schema):
    """The JSON body validated against ``schema`` off the event loop (bounded as every JSON body: api/json_body.py);
    FastAPI's 422 when it does not fit."""
    return await read_json(request, schema)


@router.post("/{model_id}/samples", response_model=BufferPublic, openapi_extra=SAMPLES_BODY,
             summary="Append samples to the training buffer: inline, from a dataset, or from a file body")
async def add_samples(model_id: str, request: Request, options: dict = Depends(file_options),
                      viewer: str | None = Depends(visible_owner), service: Service = Depends(get_service)) -> BufferPublic:
    """JSON `{"inputs", "targets"}` or `{"dataset": id}` (a copy of an uploaded dataset), or a file body as
    for POST /datasets (NPZ, CSV with ?target=, JSON), raw or as the multipart field `file`."""
    content_type = request.headers.get("content-type", "")
    if _is_json(content_type) and options["fmt"] in (None, "json"):
        if options["targets"]:  # it was ignored: the rows went in with the body's targets
            raise InvalidInput("?target= names CSV columns; a JSON body gives its `targets` (or a `dataset`) itself")
        try:
            body = await _json_body(request, SamplesCreate)
        except InvalidInput as exc:
            if content_type:
                raise
            raise InvalidInput(f"{exc}. With no Content-Type the body is read as JSON samples: send a file with its type "
                               "(text/csv, application/x-npz) or ?format=npz|csv|json") from None
        size, queued = await run_in_threadpool(service.add_samples, model_id, body, viewer)
    else:
        size, queued = await service.add_samples_file(model_id, request.stream(), content_type,
                                                      request.headers.get("content-length"), **options, viewer=viewer)
    return BufferPublic(model_id=model_id, buffer_size=size, queued_jobs=queued)


@router.get("/{model_id}/samples", response_model=BufferPublic, summary="Size of the training buffer")
def buffer_size(model_id: str, service: Service = Depends(get_service)) -> BufferPublic:
    return BufferPublic(model_id=model_id, buffer_size=service.buffer_size(model_id))


@router.delete("/{model_id}/samples", response_model=BufferPublic, summary="Empty the training buffer")
def clear_samples(model_id: str, service: Service = Depends(get_service)) -> BufferPublic:
    service.clear_samples(model_id)
    return BufferPublic(model_id=model_id, buffer_size=0)


@router.get("/{model_id}/export", response_class=Response,
            summary="Download the model: the core's .npz (format=npz) or an ONNX model (format=onnx)",
            responses={200: {"content": {"application/octet-stream": {}, "application/onnx": {}}},
                       501: {"description": "format=onnx on an installation without the onnx extra (the message says "
                                            "what to install)"}})
def export_model(model_id: str, format: Literal["npz", "onnx"] = Query("npz", description=(
        "npz: the core's file (Network.load reads it, POST /models/import takes it back); "
        "onnx: an ONNX model (opset 17, input 'input', output 'output') for onnxruntime and other runtimes.")),
        version: int | None = Query(None, ge=1, le=2**62, description=(
            "A kept version (GET /models/{model_id}/versions) instead of the current one.")),
        service: Service = Depends(get_service)) -> Response:
    data = service.export_model(model_id, format, version=version)  # ?version= was ignored: the current one came
    media_type = "application/onnx" if format == "onnx" else "application/octet-stream"
    name = f"{model_id}.v{version}.{format}" if version is not None else f"{model_id}.{format}"
    return Response(data, media_type=media_type, headers={"Content-Disposition": f'attachment; filename="{name}"'})

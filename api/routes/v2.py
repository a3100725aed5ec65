"""The Open Inference Protocol (KServe V2 / Triton), REST: clients built for KServe, Triton and Seldon
work unchanged. Thin routes over `api/inference.py`; errors are `{"error": "..."}` (api/errors.py)."""

from fastapi import APIRouter, Depends, Header, Path, Request, Response

from api import inference
from api.routes import get_service
from api.services import Service

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol (V2)"])

VERSION = Path(description="A model version: `version` of GET /models/{model_id}.", examples=["1"],
               openapi_examples={"first": {"summary": "the model's first version", "value": "1"}})  # Swagger UI fills it in
INFER_EXAMPLE = {"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32",
                             "data": [5.1, 3.5, 1.4, 0.2, 6.3, 3.3, 6.0, 2.5]}]}
INFER_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object", "description": "`binary_data_output: true` returns every output as bytes."},
        "inputs": {"type": "array", "items": {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
            "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
            "datatype": {"type": "string", "enum": ["FP32", "FP64"]},
            "parameters": {"type": "object", "description": "`binary_data_size`: the tensor's bytes follow the JSON."},
            "data": {"type": "array", "items": {}}}}},
        "outputs": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "parameters": {"type": "object", "description": (
                "`binary_data: true` returns this output as bytes; `classification: k` (on `output`) returns the "
                "top k of each row as BYTES strings `<value>:<index>[:<label>]`, shape [batch, k] (Triton's "
                "classification extension).")}}}}}},
        "example": INFER_EXAMPLE},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                 "description": "Binary tensor data extension: the JSON header (its length in "
                                                "Inference-Header-Content-Length), then the tensors' bytes."},
}}}
INFER_RESPONSES = {200: {"description": "Outputs as JSON, or (binary outputs asked) a JSON header followed by the "
                                        "tensors' bytes, with Inference-Header-Content-Length",
                         "content": {"application/json": {}, "application/octet-stream": {}}}}
HEADER_LENGTH = Header(None, alias="Inference-Header-Content-Length",
                       description="Binary tensor data extension: bytes of the JSON header at the start of the "
                                   "(decompressed) body.")
CONTENT_ENCODING = Header(None, alias="Content-Encoding",
                          description="`gzip` or `deflate` (zlib) for a compressed body (Triton's client: "
                                      "request_compression_algorithm); decompressed to at most NN_MAX_REQUEST_BYTES.")


@router.get("", summary="Server metadata: name, version, extensions")
def server_metadata() -> dict:
    return inference.server_metadata()


@router.get("/health/live", summary="The server is live")
def live() -> dict:
    return {"live": True}


@router.get("/health/ready", summary="The server is ready: its store answers (503 otherwise)")
def ready(service: Service = Depends(get_service)) -> dict:
    return inference.server_ready(service)


@router.get("/models/{model_id}", summary="Model metadata: inputs and outputs with datatype and shape")
def model_metadata(model_id: str, service: Service = Depends(get_service)) -> dict:
    return inference.model_metadata(service, model_id)


@router.get("/models/{model_id}/versions/{version}", summary="Metadata of one model version")
def version_metadata(model_id: str, version: str = VERSION, service: Service = Depends(get_service)) -> dict:
    return inference.model_metadata(service, model_id, version)


@router.get("/models/{model_id}/ready", summary="The model can serve (404 if unknown)")
def model_ready(model_id: str, service: Service = Depends(get_service)) -> dict:
    return inference.model_ready(service, model_id)


@router.get("/models/{model_id}/versions/{version}/ready", summary="The model version can serve (404 if unknown)")
def version_ready(model_id: str, version: str = VERSION, service: Service = Depends(get_service)) -> dict:
    return inference.model_ready(service, model_id, version)


def _infer_response(result: tuple[bytes, int | None]) -> Response:
    body, header_length = result
    if header_length is None:
        return Response(body, media_type="application/json")
    return Response(body, media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(header_length)})


def _codings(request: Request, first: str | None) -> str | None:
    """Every Content-Encoding line as one list (RFC 9110: repeated lines form one list): a header parameter holds
    only the first line, and `gzip` then `br` on two lines read as plain gzip."""
    if first is None:
        return None
    lines = request.headers.getlist("content-encoding")
    return first if len(lines) == 1 else ", ".join(lines)


@router.post("/models/{model_id}/infer", response_class=Response, openapi_extra=INFER_BODY, responses=INFER_RESPONSES,
             summary="Inference: JSON tensors or the binary tensor data extension")
async def infer(model_id: str, request: Request, header_length: str | None = HEADER_LENGTH,
                content_encoding: str | None = CONTENT_ENCODING, service: Service = Depends(get_service)) -> Response:
    body = await request.body()
    return _infer_response(await inference.infer_on_loop(service, model_id, None, body, header_length,
                                                         _codings(request, content_encoding)))


@router.post("/models/{model_id}/versions/{version}/infer", response_class=Response, openapi_extra=INFER_BODY,
             responses=INFER_RESPONSES, summary="Inference with one model version")
async def infer_version(request: Request, model_id: str, version: str = VERSION, header_length: str | None = HEADER_LENGTH,
                        content_encoding: str | None = CONTENT_ENCODING, service: Service = Depends(get_service)) -> Response:
    body = await request.body()
    return _infer_response(await inference.infer_on_loop(service, model_id, version, body, header_length,
                                                         _codings(request, content_encoding)))

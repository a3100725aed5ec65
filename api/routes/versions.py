"""A model's kept versions: list, read, download, compute with (?version= on /output and /evaluate), restore."""

from typing import Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Response

from api import etag
from api.routes import get_service
from api.schemas import ModelPublic, VersionPublic, VersionsPublic, Weights
from api.services import Service

router = APIRouter(prefix="/models/{model_id}/versions", tags=["versions"])

VERSION = Path(ge=1, le=2**62, description="Version number, from GET /models/{model_id}/versions.", examples=[1],
               openapi_examples={"first": {"summary": "the model's first version", "value": 1}})  # Swagger UI fills it in


@router.get("", response_model=VersionsPublic, summary="The model's kept versions, newest first, with what made each")
def list_versions(model_id: str, service: Service = Depends(get_service)) -> VersionsPublic:
    versions = service.list_versions(model_id)
    current = versions[0].version if versions else service.get_model(model_id).version
    return VersionsPublic(data=[VersionPublic.from_record(v, current) for v in versions], count=len(versions),
                          current_version=current, keep=service.settings.keep_versions)


@router.get("/{version}", response_model=VersionPublic, summary="One kept version: what made it, when, its job's metrics")
def get_version(model_id: str, version: int = VERSION, service: Service = Depends(get_service)) -> VersionPublic:
    record = service.get_version(model_id, version)
    return VersionPublic.from_record(record, service.get_model(model_id).version)


@router.get("/{version}/weights", response_model=Weights, summary="Weights and biases of every layer of a kept version",
            responses={304: {"description": "Not modified: If-None-Match lists this version's ETag."}})
def get_version_weights(model_id: str, response: Response, version: int = VERSION,
                        if_none_match: str | None = Header(None, description=(
                            "The ETag of an earlier read of this version: 304 with no body when it matches.")),
                        service: Service = Depends(get_service)) -> dict | Response:
    """A kept version never changes: its `ETag` stays valid until it is pruned (then 404)."""
    return etag.weights(service, model_id, version, if_none_match, response)


@router.get("/{version}/export", response_class=Response, summary="Download a kept version (npz or onnx)",
            responses={200: {"content": {"application/octet-stream": {}, "application/onnx": {}}}})
def export_version(model_id: str, version: int = VERSION, format: Literal["npz", "onnx"] = Query(
        "npz", description="npz: the core's file (POST /models/import takes it back); onnx: an ONNX model."),
        service: Service = Depends(get_service)) -> Response:
    data = service.export_model(model_id, format, version=version)
    media_type = "application/onnx" if format == "onnx" else "application/octet-stream"
    return Response(data, media_type=media_type,
                    headers={"Content-Disposition": f'attachment; filename="{model_id}.v{version}.{format}"'})


@router.post("/{version}/restore", response_model=ModelPublic,
             summary="Make a new current version equal to a kept one (409 while a job trains the model)")
def restore_version(model_id: str, version: int = VERSION, service: Service = Depends(get_service)) -> ModelPublic:
    return ModelPublic.from_record(service.restore_version(model_id, version))

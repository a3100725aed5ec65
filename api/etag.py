"""ETags of model reads (id, uid and version: a re-created model gets new ones) and the
conditional requests built on them: If-None-Match -> 304 on GET, If-Match -> 412 on PUT weights."""

from api.errors import PreconditionFailed, VersionConflict
from api.schemas import Weights
from api.services import Service
from api.storage.base import ModelRecord


def model_etag(record: ModelRecord, version: int | None = None, kind: str = "m") -> str:
    """``"<id>.<uid>.<version>.<kind>"``; kind ``m`` for the model summary, ``w`` for its weights."""
    return f'"{record.model_id}.{record.uid[:12]}.{record.version if version is None else version}.{kind}"'


def tags(header: str) -> list[str]:
    return [tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()]


def matches(header: str | None, record: ModelRecord) -> bool:
    """True when the header lists a current ETag of the model (either representation), or is ``*``."""
    if header is None:
        return False
    listed = tags(header)
    return "*" in listed or any(tag in listed for tag in (model_etag(record), model_etag(record, kind="w")))


def set_weights_if_match(service: Service, model_id: str, body: Weights, if_match: str | None) -> ModelRecord:
    """PUT weights; with If-Match, only onto the version it names (412 otherwise, atomically)."""
    if if_match is None:
        return service.set_weights(model_id, body)
    record = service.get_model(model_id)
    if not matches(if_match, record):
        raise PreconditionFailed(f"If-Match {if_match} is not a current ETag of model {model_id!r} ({model_etag(record)} "
                                 f"from GET /models/{model_id}, {model_etag(record, kind='w')} from its weights); "
                                 "GET it again and retry")
    try:
        return service.set_weights(model_id, body if body.version is not None else
                                   body.model_copy(update={"version": record.version}))
    except VersionConflict as exc:  # changed between the check and the write
        raise PreconditionFailed(str(exc)) from None

"""ETags of model reads (id, uid and version: a re-created model gets new ones) and the
conditional requests built on them: If-None-Match -> 304 on GET, If-Match -> 412 on PUT weights."""

import hashlib

from fastapi import Response

from api.errors import PreconditionFailed, VersionConflict
from api.schemas import Weights
from api.services import Service
from api.storage.base import ModelRecord


def model_etag(record: ModelRecord, version: int | None = None, kind: str = "m", state: str = "") -> str:
    """``"<id>.<uid>.<version>.<kind>"``; kind ``m`` for the model summary, ``w`` for its weights. The summary's
    also carries ``-<state>``, a digest of what it shows besides the weights (buffer size, latest job)."""
    version = record.version if version is None else version
    return f'"{record.model_id}.{record.uid[:12]}.{version}.{kind}{"-" + state if state else ""}"'


def summary_etag(record: ModelRecord, body: str) -> str:
    """The summary's ETag: its version, and a digest of the JSON ``body`` it answers (a sample appended or a job
    submitted changes the body, not the version: a 304 would hand back a stale buffer size)."""
    return model_etag(record, state=hashlib.sha256(body.encode()).hexdigest()[:12])


def tags(header: str, weak: bool = True) -> list[str]:
    """The entity tags a header lists. If-None-Match compares them weakly (``W/"x"`` is ``"x"``); If-Match strongly
    (``weak=False``, RFC 9110 13.1.1): a weak tag matches nothing there, so a PUT with one is a 412."""
    listed = [tag.strip() for tag in header.split(",") if tag.strip()]
    return [tag.removeprefix("W/") for tag in listed] if weak else [tag for tag in listed if not tag.startswith("W/")]


def _version_tag(tag: str) -> str:
    """A tag without the summary's state: the version it names, which If-Match compares."""
    head, _, kind = tag.strip('"').rpartition(".")
    return f'"{head}.{kind.split("-", 1)[0]}"' if head else tag


def matches(header: str | None, record: ModelRecord) -> bool:
    """If-Match: True when the header lists a strong ETag of the model's current version (either representation,
    the summary's whatever its state), or is ``*``."""
    if header is None:
        return False
    listed = {_version_tag(tag) for tag in tags(header, weak=False)}
    return "*" in listed or any(tag in listed for tag in (model_etag(record), model_etag(record, kind="w")))


def none_match(header: str | None, current: str) -> bool:
    """If-None-Match of the summary: True (304) when the header lists exactly its current ETag, or is ``*``."""
    return header is not None and bool({current, "*"} & set(tags(header)))


def weights(service: Service, model_id: str, version: int | None, if_none_match: str | None,
            response: Response) -> dict | Response:
    """The weights of ``version`` (the current one when None) with their ETag, or a 304 when If-None-Match lists it
    (only the weights' own tag: the summary's names another representation). A version asked for is served as
    asked, also when it was current and a newer one came in meanwhile."""
    record = service.get_model(model_id)
    if version is None and none_match(if_none_match, model_etag(record, kind="w")):
        return Response(status_code=304, headers={"ETag": model_etag(record, kind="w")})
    served = service.get_weights(model_id) if version is None else service.version_weights(model_id, version)
    tag = model_etag(record, served["version"], kind="w")
    if version is not None and none_match(if_none_match, tag):  # a kept version never changes: its tag is its own
        return Response(status_code=304, headers={"ETag": tag})
    response.headers["ETag"] = tag
    return served


def set_weights_if_match(service: Service, model_id: str, body: Weights, if_match: str | None) -> ModelRecord:
    """PUT weights; with If-Match, only onto the version it names (412 otherwise, atomically)."""
    if if_match is None:
        return service.set_weights(model_id, body)
    record = service.get_model(model_id)
    if not matches(if_match, record):
        raise PreconditionFailed(f"If-Match {if_match} is not an ETag of model {model_id!r} at its current version "
                                 f"{record.version} ({model_etag(record, kind='w')} from its weights, or the ETag of "
                                 f"GET /models/{model_id}); GET it again and retry")
    try:
        return service.set_weights(model_id, body if body.version is not None else
                                   body.model_copy(update={"version": record.version}), expected_uid=record.uid)
    except VersionConflict as exc:  # changed between the check and the write
        raise PreconditionFailed(str(exc)) from None

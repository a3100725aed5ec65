"""HTML pages that work with no internet: /dashboard and /redoc (/docs comes from fastapi-offline)."""
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html
from fastapi.responses import HTMLResponse, Response

router = APIRouter(tags=["pages"])
STATIC = Path(__file__).resolve().parents[1] / "static"
DASHBOARD = STATIC / "dashboard.html"
FAVICON = STATIC / "favicon.svg"
OFFLINE_ASSETS = "/static-offline-docs"  # fastapi-offline's mount of the Swagger UI and ReDoc bundles


@router.get("/dashboard", response_class=HTMLResponse, summary="Live training dashboard (HTML page)")
def dashboard() -> HTMLResponse:
    """Models with their versions (restore button), every job with filters and paging, and the selected
    job's loss, accuracy and learning-rate curves updating live from its event stream (a second job's
    curves can overlay them). Link to a model or job with `/dashboard?model=..&job=..`. The page asks
    for the API key when the service needs one."""
    return HTMLResponse(DASHBOARD.read_text(encoding="utf-8"))


@router.get("/favicon.svg", include_in_schema=False)
@router.get("/favicon.ico", include_in_schema=False)  # what browsers ask for on pages without an icon link (/docs)
def favicon() -> Response:
    """The dashboard's icon, served by the service itself (no outside request)."""
    return Response(FAVICON.read_bytes(), media_type="image/svg+xml", headers={"Cache-Control": "public, max-age=86400"})


@router.get("/redoc", include_in_schema=False)
def redoc(request: Request) -> HTMLResponse:
    page = get_redoc_html(openapi_url=request.app.openapi_url, title=f"{request.app.title} - ReDoc",
                          redoc_js_url=f"{OFFLINE_ASSETS}/redoc.standalone.js",
                          redoc_favicon_url=f"{OFFLINE_ASSETS}/favicon.png", with_google_fonts=False)
    # The ReDoc bundle's footer logo points at a CDN; keep images local so the page makes no outside request.
    page.headers["Content-Security-Policy"] = "img-src 'self' data:"
    return page

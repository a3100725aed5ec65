"""Who the caller is: its key's name and scope, and what that scope may not do (the dashboard greys those out)."""

from fastapi import APIRouter, Request

from api import auth
from api.schemas import Whoami

router = APIRouter(prefix="/auth", tags=["auth"])


@router.get("/whoami", response_model=Whoami, summary="The API key's name, scope and the operations it may not call")
async def whoami(request: Request) -> dict:  # async: no I/O, it reads the routes and the caller
    """Any key may call it. `denied` comes from the same table the service enforces (each operation's
    `x-required-scope`), so a client can hide or disable what its key cannot do. Without keys: full access."""
    tenancy = request.app.state.settings.tenancy
    return auth.whoami(request.app, auth.get_caller(request), tenancy)

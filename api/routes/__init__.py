"""HTTP routes: thin functions, one service call each."""

from fastapi import Request

from api.services import Service


async def get_service(request: Request) -> Service:
    """async: FastAPI runs a plain def dependency in a worker thread, a hop per request for one attribute read."""
    return request.app.state.service

"""HTTP routes: thin functions, one service call each."""

from fastapi import Request

from api.services import Service


def get_service(request: Request) -> Service:
    return request.app.state.service

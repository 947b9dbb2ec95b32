"""What the viewer's handlers share: the 400 reply and reading a JSON body."""

from __future__ import annotations

import json
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request


class BadRequest(HTTPException):
    """A request the viewer cannot answer as asked (400), saying what was wrong."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message)


async def json_body(request: Request) -> Any:
    """The request's body as JSON (an empty body is ``{}``).

    Raises:
        BadRequest: the body is not JSON.
    """
    try:
        return json.loads(await request.body() or b"{}")
    except ValueError as exc:
        raise BadRequest(f"the body must be JSON: {exc}") from None

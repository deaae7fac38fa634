"""Reading a request safely: size limit, media type, JSON, credentials.

Everything here raises `EstuaryError` subclasses with a message fit for the client.
"""

from __future__ import annotations

import orjson
from starlette.requests import Request

from estuary.auth.keys import Authenticator, Principal
from estuary.core.errors import (
    AuthenticationFailed,
    InvalidRequest,
    RequestTooLarge,
    UnsupportedMediaType,
)

__all__ = ["authenticate", "read_json", "refuse_url_credentials"]

_URL_CREDENTIALS = ("api_key", "key", "apikey", "token", "access_token")


async def read_json(request: Request, max_bytes: int) -> object:
    """The request body as JSON, refusing non-JSON media types and bodies over `max_bytes`."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type and media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaType(f"send the body as application/json, not '{media_type}'")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise RequestTooLarge(f"the request body is larger than {max_bytes} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise RequestTooLarge(f"the request body is larger than {max_bytes} bytes")
    if not body:
        raise InvalidRequest("the request body is empty; send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON ({exc.msg})") from None


async def authenticate(request: Request, authenticator: Authenticator) -> Principal:
    """The caller from the `Authorization` header; a key in the URL is refused outright."""
    refuse_url_credentials(request)
    client = request.client
    return await authenticator.authenticate(
        request.headers.get("authorization"), client_ip=client.host if client else None
    )


def refuse_url_credentials(request: Request) -> None:
    """URLs end up in logs and browser history: a key there is an error, not a credential."""
    if request.scope["query_string"] and any(
        name in request.query_params for name in _URL_CREDENTIALS
    ):
        raise AuthenticationFailed(
            "a gateway key is never accepted in a URL; get a stream ticket from POST /api/tickets"
        )

"""Checks every request passes before any route runs (docs/serve.md, "Security"):

- only ``GET`` and ``HEAD``: no endpoint writes, and anything else is refused here (405);
- the token, when the server has one, on every request (static files included), from
  ``Authorization: Bearer <token>``, the ``histovl_token`` cookie, or ``?token=`` (which sets the
  cookie, so links need not carry it); compared in constant time; 401 otherwise;
- on loopback, the ``Host`` header must name this machine (``localhost``, ``127.0.0.1``,
  ``[::1]``): a web page elsewhere cannot reach the server through DNS rebinding;
- responses carry ``nosniff``, no referrer, a same-origin frame rule and a content security
  policy allowing scripts from the server only.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

from histovl.serve.config import LOOPBACK_NAMES, ServeConfig, is_loopback

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

COOKIE = "histovl_token"
ALLOWED_METHODS = frozenset({"GET", "HEAD"})
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"SAMEORIGIN"),
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
     b"script-src 'self'; connect-src 'self'; frame-ancestors 'self'; form-action 'self'; base-uri 'none'"),
]


class SecurityMiddleware:
    """The checks above, as plain ASGI (cheap enough for thousands of tile requests)."""

    def __init__(self, app: ASGIApp, config: ServeConfig) -> None:
        self.app = app
        self.token = config.token
        self.check_host = is_loopback(config.host)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if scope["method"] not in ALLOWED_METHODS:
            await _plain(send, 405, "read-only server: only GET and HEAD", [(b"allow", b"GET, HEAD")])
            return
        if self.check_host and not _local_host(headers.get("host", "")):
            await _plain(send, 421, "this server answers only to localhost / 127.0.0.1")
            return
        set_cookie = False
        if self.token is not None:
            given, from_query = _given_token(scope, headers)
            if given is None or not secrets.compare_digest(given.encode(), self.token.encode()):
                await _plain(send, 401, "token required: open the URL with ?token=<token> once, or send "
                                        "'Authorization: Bearer <token>'", [(b"www-authenticate", b"Bearer")])
                return
            set_cookie = from_query

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = list(SECURITY_HEADERS)
                if set_cookie:
                    extra.append((b"set-cookie", f"{COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict".encode()))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _local_host(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
    return is_loopback(name) or name.strip("[]").lower() in LOOPBACK_NAMES


def _given_token(scope: Scope, headers: dict[str, str]) -> tuple[str | None, bool]:
    """The token a request carries, and whether it came in the query string."""
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip(), False
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if query.get("token"):
        return query["token"][0], True
    cookie: SimpleCookie = SimpleCookie()
    try:
        cookie.load(headers.get("cookie", ""))
    except ValueError:
        return None, False
    morsel = cookie.get(COOKIE)
    return (morsel.value if morsel is not None else None), False


async def _plain(send: Send, status: int, text: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
                            *SECURITY_HEADERS, *(headers or [])]})
    await send({"type": "http.response.body", "body": body})

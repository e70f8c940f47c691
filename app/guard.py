"""HTTP guards in front of the page and the API (ASGI middleware, given to Gradio's FastAPI app).

- ``HostCheck``: a server without logins answers only requests addressed to it by a loopback name or the
  name it was started with (``--host``), and whose ``Origin``, when a browser sends one, is such a name:
  a web page elsewhere cannot drive the API through DNS rebinding (Jupyter's and Gradio's own advice).
- ``RequestSizeLimit``: request bodies larger than a limit are refused with 413 before they are read
  whole (file uploads have their own limit, ``--max-upload-mb``, enforced by Gradio).
- ``LoginThrottle``: failed logins counted per client address (the users file throttles per user name,
  services.users): after FREE_FAILURES in a row the address gets 429 for a time that doubles with each
  further failure.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from urllib.parse import urlsplit

from services.users import FailureThrottle

log = logging.getLogger(__name__)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
UPLOAD_PREFIX = "/gradio_api/upload"


def _host_name(value: str) -> str:
    """The host part of a Host header or a URL's netloc, without port or brackets, lower case."""
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:7860
        return value[1:value.find("]")] if "]" in value else value[1:]
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


def allowed_names(host: str) -> set[str]:
    names = set(LOOPBACK_NAMES)
    try:
        if not ipaddress.ip_address(host).is_unspecified:  # 0.0.0.0 names no host
            names.add(host.lower())
    except ValueError:
        names.add(host.lower())  # a name, e.g. workbench.lab
    return names


async def _refuse(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class HostCheck:
    def __init__(self, app, names: set[str]):
        self.app = app
        self.names = set(names)

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            host = _host_name(headers.get("host", ""))
            origin = headers.get("origin")
            origin_host = _host_name(urlsplit(origin).netloc) if origin and origin != "null" else None
            if host not in self.names or (origin_host is not None and origin_host not in self.names):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                await _refuse(send, 403, f"this server answers requests for {', '.join(sorted(self.names))} only "
                                         "(a server without logins refuses other Host and Origin names); open it "
                                         "by one of those, or start it with --auth-file")
                return
        await self.app(scope, receive, send)


class RequestSizeLimit:
    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path", "").startswith(UPLOAD_PREFIX):
            await self.app(scope, receive, send)
            return
        message = (f"the request is larger than {self.max_bytes / 2**20:g} MB (--max-request-mb); send masks as "
                   "compressed RLE or polygons, or fewer at a time")
        headers = dict(scope.get("headers", []))
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await _refuse(send, 413, message)
            return
        if length is not None:
            await self.app(scope, receive, send)  # the declared length is within the limit
            return
        # no length (chunked): read the body here, up to the limit, then hand it on
        events, received = [], 0
        while True:
            event = await receive()
            events.append(event)
            if event["type"] != "http.request":
                break
            received += len(event.get("body", b""))
            if received > self.max_bytes:
                await _refuse(send, 413, message)
                return
            if not event.get("more_body", False):
                break

        async def replay():
            return events.pop(0) if events else await receive()

        await self.app(scope, replay, send)


class LoginThrottle:
    FREE_FAILURES = 10  # failed logins in a row from one address before it waits

    def __init__(self, app, clock=time.monotonic):
        self.app = app
        self.throttle = FailureThrottle(self.FREE_FAILURES, clock=clock)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST" or not scope.get("path", "").endswith("/login"):
            await self.app(scope, receive, send)
            return
        address = (scope.get("client") or ("?", 0))[0]
        wait, count = self.throttle.wait(address)
        if wait > 0:
            log.warning("login from %s refused: %d failed logins, %.0f s to wait", address, count, wait)
            await _refuse(send, 429, f"too many failed logins from this address: try again in {wait:.0f} s")
            return
        status = {}

        async def watch(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        await self.app(scope, receive, watch)
        if status.get("code") == 200:
            self.throttle.succeeded(address)
        elif status.get("code") in (400, 401, 403):
            self.throttle.failed(address)

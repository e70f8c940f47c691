"""HTTP guards in front of the page and the API (ASGI middleware, given to Gradio's FastAPI app).

- ``RequestSizeLimit``: counts the body bytes a request really brings, whatever its headers say: more than the
  limit (uploads aside: ``--max-upload-mb``, enforced by Gradio) gets 413 and more than its Content-Length 400,
  and the handler never receives more; a request with both Content-Length and Transfer-Encoding (the shape of
  request smuggling) gets 400 before anything is read.
- ``HostCheck``: a server without logins answers only requests addressed to it by a loopback name or the
  name it was started with (``--host``), and whose ``Origin``, when a browser sends one, is such a name
  (``null`` included): a web page elsewhere cannot drive the API through DNS rebinding.
- ``OriginCheck``: a browser's request that changes something (POST, PUT, PATCH, DELETE, a websocket) must come
  from a page of this server: an ``Origin`` that is not the request's own host and port, or ``null`` (sandboxed
  frames), gets 403; with or without logins.
- ``LoginRequired`` (with logins): every request but the login, the login page and its static files needs a live
  session, checked before any body is read (401); sessions of users removed from the users file or given a new
  password end at once (``SessionTokens``).
- ``LoginThrottle`` (with logins): failed logins counted per client address and user name, and per address over
  all names, for the login route however its path is spelled.
- ``LoginCheck``: the password check (scrypt) that Gradio awaits, run off the event loop, a few at a time.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import unquote, urlsplit

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, HTTPConnection, Request
from starlette.routing import Match

from services.users import FailureThrottle, UsersFile

log = logging.getLogger(__name__)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
UPLOAD_ROUTE = "/gradio_api/upload"
LOGIN_ROUTES = frozenset({"/login", "/login/"})
# what a browser without a session needs to show the login page (GET and HEAD only), and the call that
# Gradio's launch makes without one (it starts the queue, once)
LOGIN_PAGE_ROUTES = frozenset({"/", "/static/{path:path}", "/assets/{path:path}", "/svelte/{path:path}",
                               "/favicon.ico", "/manifest.json", "/theme.css", "/gradio_api/theme.css",
                               "/robots.txt", "/pwa_icon", "/pwa_icon/{size}", "/gradio_api/startup-events"})
STATE_CHANGING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


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


def _authority(host: str | None, port: int | None) -> tuple[str, int | None]:
    return (host or "").lower(), None if port in (None, 80, 443) else port  # default ports: as if not written


def same_origin(origin: str, host_header: str) -> bool:
    """True when a browser's ``Origin`` names the host and port the request was sent to (its Host header);
    ``null`` (a sandboxed frame, a local file) never does."""
    parts, host = urlsplit(origin.strip()), urlsplit("//" + host_header.strip())
    try:
        if parts.scheme not in ("http", "https") or not parts.hostname or not host.hostname:
            return False
        return _authority(parts.hostname, parts.port) == _authority(host.hostname, host.port)
    except ValueError:  # a port that is not a number
        return False


def _routes(routes):
    """The routes in the order the router tries them (FastAPI keeps an included router, such as Gradio's
    /gradio_api one, as one entry holding its ``original_router``)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _routes(included.routes)
        else:
            yield route


ROUTE_SCOPE_KEY = "workbench.routed_path"  # routed_path's answer, kept in the scope for the next guard


def routed_path(scope) -> str | None:
    """The path template of the route that the app's router sends this request to (None: none): the guards
    decide by the route, not by one spelling of its path (trailing slash, %-encoding, root_path)."""
    if ROUTE_SCOPE_KEY in scope:
        return scope[ROUTE_SCOPE_KEY]
    found = None
    router = getattr(scope.get("app"), "router", None)
    for route in _routes(getattr(router, "routes", ())):
        match, _ = route.matches(scope)
        if match is Match.FULL:
            found = getattr(route, "path", None)
            break
    scope[ROUTE_SCOPE_KEY] = found
    return found


def _looks_like_login(path: str) -> bool:
    """The path, decoded, with repeated slashes and case folded, ends in /login (a net under routed_path, for
    paths it finds no route for)."""
    for _ in range(3):
        path = unquote(path)
    return re.sub(r"/+", "/", path).lower().rstrip("/").endswith("/login")


async def _refuse(scope, send, status: int, message: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
        return
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class HostCheck:
    def __init__(self, app, names: set[str]):
        self.app = app
        self.names = set(names)

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            headers = Headers(scope=scope)
            host = _host_name(headers.get("host", ""))
            origin = headers.get("origin")
            origin_host = _host_name(urlsplit(origin).netloc) if origin is not None else None  # "null": ""
            if host not in self.names or (origin_host is not None and origin_host not in self.names):
                await _refuse(scope, send, 403,
                              f"this server answers requests for {', '.join(sorted(self.names))} only (a server "
                              "without logins refuses other Host and Origin names, and the Origin null); open it "
                              "by one of those, or start it with --auth-file")
                return
        await self.app(scope, receive, send)


class OriginCheck:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket" or (scope["type"] == "http" and scope["method"] in STATE_CHANGING_METHODS):
            headers = Headers(scope=scope)
            origin, host = headers.get("origin"), headers.get("host", "")
            if origin is not None and not same_origin(origin, host):
                await _refuse(scope, send, 403,
                              f"this server takes changes only from its own pages: the Origin {origin[:100]!r} is "
                              f"not {host[:100]!r}; open the workbench at the address the requests go to (a proxy "
                              "in front must pass the Host header on)")
                return
        await self.app(scope, receive, send)


class _BodyRefused(Exception):
    """Raised into the app by the counting ``receive`` once the body went over its limit (already answered)."""


class RequestSizeLimit:
    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        lengths = [value for key, value in scope.get("headers", []) if key.lower() == b"content-length"]
        encodings = [value for key, value in scope.get("headers", []) if key.lower() == b"transfer-encoding"]
        if lengths and encodings:
            await _refuse(scope, send, 400, "the request has both Content-Length and Transfer-Encoding headers; "
                                            "send one of them")
            return
        if len(lengths) > 1 or (lengths and not lengths[0].strip().isdigit()):
            await _refuse(scope, send, 400, "the request's Content-Length must be one whole number")
            return
        declared = int(lengths[0]) if lengths else None
        limit = None if routed_path(scope) == UPLOAD_ROUTE else self.max_bytes  # uploads: Gradio's own limit
        too_large = (f"the request is larger than {self.max_bytes / 2**20:g} MB (--max-request-mb); send masks as "
                     "compressed RLE or polygons, or fewer at a time")
        if declared is not None and limit is not None and declared > limit:
            await _refuse(scope, send, 413, too_large)
            return
        state = {"received": 0, "started": False, "refused": False}

        async def counted_receive():
            if state["refused"]:
                raise _BodyRefused()
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if declared is not None and state["received"] > declared:
                    await refuse(400, "the request's body is longer than its Content-Length; send the length of "
                                      "the body you send")
                elif limit is not None and state["received"] > limit:
                    await refuse(413, too_large)
            return message

        async def refuse(status: int, message: str):
            if not state["started"]:
                await _refuse(scope, send, status, message)
            state["refused"] = state["started"] = True
            raise _BodyRefused()

        async def guarded_send(message):
            if state["refused"]:
                return  # the app's own answer to the refused body: already answered
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except* _BodyRefused:  # also from inside a task group (a streamed answer reading on)
            pass  # answered already; an answer under way when the body went over ends with the connection


class SessionTokens(dict):
    """Gradio's sessions (``App.tokens``: token -> user name), each bound to the password hash its user had when
    it began (Gradio stores it right after the login check returns), so that ``end_stale`` can end the sessions
    of users removed from the users file or given a new password."""

    def __init__(self, users: UsersFile, sessions=()):
        super().__init__()
        self.users = users
        self.hashes: dict[str, str | None] = {}
        for token, name in dict(sessions).items():
            self[token] = name

    def __setitem__(self, token, name):
        self.hashes[token] = self.users.users.get(name)
        super().__setitem__(token, name)

    def __delitem__(self, token):
        self.hashes.pop(token, None)
        super().__delitem__(token)

    def end_stale(self) -> list[str]:
        """End the sessions whose user is gone or has another password hash now -> those users' names."""
        stale = [token for token, name in self.items()
                 if self.hashes.get(token) is None or self.users.users.get(name) != self.hashes[token]]
        names = sorted({self[token] for token in stale})
        for token in stale:
            del self[token]
        return names


class LoginRequired:
    """With logins, only the login route (POST) and the login page with its static files (GET, HEAD) are
    answered without a live session (Gradio's access-token cookie); anything else gets 401 before its body
    is read. The users file is looked at (a stat) on every request and the sessions of removed users, or of
    users with a new password, end as soon as it changes."""

    def __init__(self, app, users: UsersFile):
        self.app = app
        self.users = users
        self.version = users.version

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        gradio_app = scope["app"]
        sessions = gradio_app.tokens
        if not isinstance(sessions, SessionTokens):  # before the first login: Gradio's dict, made at launch
            sessions = gradio_app.tokens = SessionTokens(self.users, sessions)
        if self.users.refresh() != self.version:
            self.version = self.users.version
            ended = sessions.end_stale()
            if ended:
                log.warning("sessions ended (removed from %s or given a new password): %s", self.users.path,
                            ", ".join(name[:80] for name in ended))
        if self._public(scope) or self._user(scope, gradio_app) is not None:
            await self.app(scope, receive, send)
            return
        await _refuse(scope, send, 401, "log in first (the page asks for a name and password; API clients: "
                                        "Client(url, auth=(name, password)) or POST /login); a session ends when "
                                        "its user is removed or given a new password")

    @staticmethod
    def _public(scope) -> bool:
        if scope["type"] != "http":
            return False
        method, route = scope["method"], routed_path(scope)
        return (method == "POST" and route in LOGIN_ROUTES) or (method in ("GET", "HEAD")
                                                                 and route in LOGIN_PAGE_ROUTES)

    @staticmethod
    def _user(scope, gradio_app) -> str | None:
        cookies = HTTPConnection(scope).cookies
        token = (cookies.get(f"access-token-{gradio_app.cookie_id}")
                 or cookies.get(f"access-token-unsecure-{gradio_app.cookie_id}"))
        return gradio_app.tokens.get(token) if token else None


class LoginThrottle:
    """Failed logins (400 from the login route) counted per client address and user name, and per address over
    all names: FREE_FAILURES in a row for one name from one address make that pair wait (429), and
    ADDRESS_FREE_FAILURES in a row from one address make the whole address wait; 2 s, doubling with each further
    failure up to 15 min (services.users.FailureThrottle); a login that succeeds clears its pair and its address.
    At most MAX_AT_ONCE logins from one address are checked at a time (429 for more)."""

    FREE_FAILURES = 10  # failed logins in a row for one name from one address before the pair waits
    ADDRESS_FREE_FAILURES = 100  # failed logins in a row from one address, any names, before the address waits
    MAX_AT_ONCE = 4  # logins from one address being checked at the same time
    MAX_BODY_BYTES = 64 * 1024  # a login form (name and password)

    def __init__(self, app, clock=time.monotonic):
        self.app = app
        self.pairs = FailureThrottle(self.FREE_FAILURES, clock=clock)
        self.addresses = FailureThrottle(self.ADDRESS_FREE_FAILURES, clock=clock)
        self.in_flight: Counter[str] = Counter()

    @staticmethod
    def is_login(scope) -> bool:
        if scope["type"] != "http" or scope.get("method") != "POST":
            return False
        route = routed_path(scope)
        return route in LOGIN_ROUTES or (route is None and _looks_like_login(scope.get("path", "")))

    async def __call__(self, scope, receive, send):
        if not self.is_login(scope):
            await self.app(scope, receive, send)
            return
        address = (scope.get("client") or ("?", 0))[0]
        wait, count = self.addresses.wait(address)
        if wait > 0:
            log.warning("login from %s refused: %d failed logins, %.0f s to wait", address, count, wait)
            await _refuse(scope, send, 429, f"too many failed logins from this address: try again in {wait:.0f} s")
            return
        if self.in_flight[address] >= self.MAX_AT_ONCE:
            await _refuse(scope, send, 429, "too many logins at once from this address: wait for their answers")
            return
        self.in_flight[address] += 1
        try:
            await self._login(scope, receive, send, address)
        finally:
            self.in_flight[address] -= 1
            if not self.in_flight[address]:
                del self.in_flight[address]

    async def _login(self, scope, receive, send, address: str):
        events, size = [], 0
        while True:  # the form, read here (small) for the user name, then handed on as it came
            message = await receive()
            events.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.MAX_BODY_BYTES:
                await _refuse(scope, send, 413, f"a login form is at most {self.MAX_BODY_BYTES // 1024} KB")
                return
            if not message.get("more_body", False):
                break

        def replay():
            pending = list(events)

            async def next_message():
                return pending.pop(0) if pending else await receive()

            return next_message

        try:
            form = await Request(scope, replay()).form()
            name = str(form.get("username") or "").strip()  # as Gradio's login reads it
            await form.close()
        except ClientDisconnect:
            return
        except (HTTPException, ValueError):
            name = ""  # not a form: the login route refuses it (422), not counted
        key = (address, name)
        wait, count = self.pairs.wait(key)
        if wait > 0:
            log.warning("login for %r from %s refused: %d failed logins, %.0f s to wait", name[:80], address, count,
                        wait)
            await _refuse(scope, send, 429, f"too many failed logins for this name from this address: try again "
                                            f"in {wait:.0f} s")
            return
        status = {}

        async def watch(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        await self.app(scope, replay(), watch)
        if status.get("code") == 200:
            self.pairs.succeeded(key)
            self.addresses.succeeded(address)
        elif status.get("code") in (400, 401, 403):
            self.pairs.failed(key)
            self.addresses.failed(address)


class LoginCheck:
    """Gradio's login check (``launch(auth=LoginCheck(users).check)``; Gradio awaits a coroutine function and
    would call a plain one on its event loop): the scrypt comparison runs in a pool of WORKERS threads, so
    that the server answers other requests meanwhile and parallel logins cannot take every core."""

    WORKERS = 2  # password checks at the same time (each scrypt takes ~16 MB and ~50 ms of a core)

    def __init__(self, users: UsersFile, workers: int | None = None):
        self.users = users
        self.pool = ThreadPoolExecutor(max_workers=workers or self.WORKERS, thread_name_prefix="login-check")

    async def check(self, username: str, password: str) -> bool:
        stored = await asyncio.get_running_loop().run_in_executor(self.pool, self.users.verify, username, password)
        # still the user's password (the file may have changed meanwhile); Gradio stores the session right after
        # this returns, without yielding, so SessionTokens binds it to this very hash
        return stored is not None and self.users.is_current(username, stored)

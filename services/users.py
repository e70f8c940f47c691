"""Logins for a server that others can reach: a users file with salted scrypt password hashes.

One line per user, ``NAME:scrypt$N$r$p$SALT$HASH`` (salt and hash in base64); written with
``python launch.py users add NAME --file users.txt``. :class:`UsersFile` checks logins (the server runs its
``verify`` off the event loop, app.guard.LoginCheck); the logged-in name then reaches every event handler as
``gr.Request.username`` and is recorded on every annotation change. The file is read again whenever it
changes, so that a removed user or a changed password takes effect at once (app.guard.LoginRequired ends
their sessions).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable
from pathlib import Path

from db.errors import WorkbenchError
from db.imagestore import atomic_write

log = logging.getLogger(__name__)

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1  # the parameters Python's documentation and RFC 7914 suggest
SALT_BYTES = 16
MIN_PASSWORD_LENGTH = 8


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=2 * 128 * n * r * p + 2**20,
                          dklen=32)


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def check_name(name: str) -> str:
    name = str(name or "").strip()
    if not name or ":" in name or any(c.isspace() for c in name) or len(name) > 200:
        raise WorkbenchError(f"user name {name!r} must be 1 to 200 characters without ':' or spaces")
    return name


class FailureThrottle:
    """Failures counted per key (a user name, a client address): after ``free`` in a row the key waits
    ``first_lock`` seconds, doubling with every further failure up to ``max_lock``; a success clears the
    count. Attempts refused while a key waits are not failures (nobody can keep a user out for long by
    trying). The ``tracked`` most recent keys are remembered. Thread-safe."""

    def __init__(self, free: int, first_lock: float = 2.0, max_lock: float = 900.0, tracked: int = 10_000,
                 clock=time.monotonic):
        self.free, self.first_lock, self.max_lock, self.tracked = free, first_lock, max_lock, tracked
        self.clock = clock
        self._failures: OrderedDict[Hashable, tuple[int, float]] = OrderedDict()  # key -> (in a row, locked until)
        self._lock = threading.Lock()

    def wait(self, key: Hashable) -> tuple[float, int]:
        """(seconds the key still waits, 0 when it may try; failures in a row)."""
        with self._lock:
            count, locked_until = self._failures.get(key, (0, 0.0))
            return max(0.0, locked_until - self.clock()), count

    def failed(self, key: Hashable) -> tuple[float, int]:
        """Count a failure -> (seconds the key now waits, failures in a row)."""
        with self._lock:
            count, locked_until = self._failures.get(key, (0, 0.0))
            count += 1
            if count >= self.free:
                locked_until = self.clock() + min(self.max_lock, self.first_lock * 2 ** (count - self.free))
            self._failures[key] = (count, locked_until)
            self._failures.move_to_end(key)
            while len(self._failures) > self.tracked:
                self._failures.popitem(last=False)
            return max(0.0, locked_until - self.clock()), count

    def succeeded(self, key: Hashable) -> None:
        with self._lock:
            self._failures.pop(key, None)


FREE_FAILURES = 5  # wrong passwords in a row for one name before it is locked (UsersFile)


class UsersFile:
    """The users of a users file; calling it checks a login (``verify`` says which stored hash matched).

    Logins are throttled per user name (Gradio's login check is not told the client's address; the server
    also counts per address and name, app.guard.LoginThrottle): after FREE_FAILURES wrong passwords in a row the
    name is locked for 2 s, doubling with each further wrong password up to 15 min (FailureThrottle); while
    locked every attempt is refused unchecked; a right password clears the count. Failures and locks are logged
    (logger ``services.users``).

    ``refresh`` reads the file again when it changed (a stat per call; its content is compared too while its
    time stamp is too recent to tell two writes apart): ``users`` and ``version`` then change, and a file that
    cannot be read lets nobody in until it is fixed."""

    RECENT_SECONDS = 2.0  # a file written this recently may change again without a new time stamp or size

    def __init__(self, path: str | os.PathLike, clock=time.monotonic):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._signature: tuple | None = None
        self._content: bytes | None = None
        self._recent = False
        self.users: dict[str, str] = {}  # name -> stored hash; replaced whole on a change, never edited
        self.version = 0  # counts the changes of ``users``
        self.problem: str | None = None  # why the file cannot be read (then nobody gets in)
        self.refresh()
        self._dummy = hash_password(secrets.token_hex(8))  # unknown names cost as much time as known ones
        self.throttle = FailureThrottle(FREE_FAILURES, clock=clock)

    def refresh(self) -> int:
        """Read the file again if it changed since the last call -> ``version``."""
        try:
            stat = self.path.stat()
            signature = (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
        except FileNotFoundError:
            stat, signature = None, None
        with self._lock:
            if signature == self._signature and not self._recent and self._content is not None:
                return self.version
            self._signature = signature
            self._recent = stat is not None and time.time() - stat.st_mtime < self.RECENT_SECONDS
            try:
                content = self.path.read_bytes() if stat is not None else b""
                problem = None
            except FileNotFoundError:
                content, problem = b"", None
            except OSError as exc:
                content, problem = None, exc
            if content is not None and content == self._content:
                return self.version
            self._content = content
            try:
                if problem is not None:
                    raise WorkbenchError(str(problem))
                users = parse_users(content.decode("utf-8"), self.path) if content else {}
                self.problem = None
            except (WorkbenchError, UnicodeDecodeError) as exc:
                self.problem = f"the users file {self.path} cannot be read: {exc}"
                log.error("%s; nobody can log in until it is fixed", self.problem)
                users = {}
            if self.version:
                ended = sorted(name for name, stored in self.users.items() if users.get(name) != stored)
                log.warning("%s changed: %d users; removed or with a new password: %s", self.path, len(users),
                            ", ".join(name[:80] for name in ended) or "nobody")
            self.users = users
            self.version += 1
            return self.version

    def verify(self, username: str, password: str) -> str | None:
        """The stored hash that ``password`` matches for ``username`` (None: refused). Slow on purpose (scrypt):
        the server calls it off its event loop."""
        name = str(username)
        wait, count = self.throttle.wait(name)
        if wait > 0:
            log.warning("login refused for %r: locked for %.0f s more after %d wrong passwords", name[:80], wait,
                        count)
            return None
        stored = self.users.get(name)
        if verify_password(str(password), stored or self._dummy) and stored is not None:
            self.throttle.succeeded(name)
            return stored
        wait, count = self.throttle.failed(name)
        log.warning("wrong password for %r (%d in a row)%s", name[:80], count,
                    f"; locked for {wait:.0f} s" if wait > 0 else "")
        return None

    def is_current(self, username: str, stored: str) -> bool:
        """True when ``stored`` is still ``username``'s password hash in the file (read again if it changed)."""
        self.refresh()
        return self.users.get(str(username)) == stored

    def __call__(self, username: str, password: str) -> bool:
        self.refresh()
        stored = self.verify(username, password)
        return stored is not None and self.is_current(username, stored)


def read_users(path: str | os.PathLike) -> dict[str, str]:
    """{name: password hash} of a users file (missing file: no users)."""
    path = Path(path)
    if not path.exists():
        return {}
    return parse_users(path.read_text(encoding="utf-8"), path)


def parse_users(text: str, path: str | os.PathLike) -> dict[str, str]:
    """{name: password hash} of a users file's text (``path`` names it in messages)."""
    users = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, stored = line.partition(":")
        if not sep or not stored.startswith("scrypt$") or stored.count("$") != 5:
            raise WorkbenchError(f"{path}, line {number}: not 'NAME:scrypt$...'; write users with "
                                 f"`python launch.py users add NAME --file {path}`")
        users[name] = stored
    return users


def write_users(path: str | os.PathLike, users: dict[str, str]) -> None:
    """Replace the users file atomically (temp file + rename), readable by its owner only (mkstemp's 0600)."""
    text = "# workbench users: NAME:scrypt$N$r$p$salt$hash (python launch.py users add NAME)\n" + "".join(
        f"{name}:{stored}\n" for name, stored in sorted(users.items()))
    atomic_write(Path(path), text.encode("utf-8"))


def set_password(path: str | os.PathLike, name: str, password: str) -> bool:
    """Add the user or change their password; returns True when the user is new."""
    name = check_name(name)
    if len(password) < MIN_PASSWORD_LENGTH:
        raise WorkbenchError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    users = read_users(path)
    new = name not in users
    users[name] = hash_password(password)
    write_users(path, users)
    return new


def remove_user(path: str | os.PathLike, name: str) -> None:
    users = read_users(path)
    if name not in users:
        raise WorkbenchError(f"there is no user {name!r} in {path}")
    del users[name]
    write_users(path, users)


def is_loopback(host: str) -> bool:
    """True when every address ``host`` names is a loopback address (127.0.0.0/8, ::1)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def server_auth(host: str, auth_file: str | os.PathLike | None) -> UsersFile | None:
    """The login check for a server on ``host``: required (with at least one user) off loopback."""
    if auth_file is None:
        if not is_loopback(host):
            raise WorkbenchError(
                f"refusing to listen on {host} without logins: anyone who can reach it could read and change "
                "the annotations. Make a users file (`python launch.py users add NAME --file users.txt`) and "
                "start with `--auth-file users.txt`, or listen on 127.0.0.1 (the default)")
        return None
    users = UsersFile(auth_file)
    if users.problem:
        raise WorkbenchError(users.problem)
    if not users.users:
        raise WorkbenchError(f"the users file {auth_file} has no users: add one with "
                             f"`python launch.py users add NAME --file {auth_file}`")
    return users

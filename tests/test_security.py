"""Security through the real server (`launch.py serve` subprocess): loopback unless logins are set up,
hashed passwords, the user recorded on every change, the upload size limit, nothing outside the data folder;
request bodies counted whatever their headers say, logins before bodies, throttles, sessions that end with their
user, origins."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

from test_app_helpers import free_port
from test_serve import ROOT, start_server

ENV = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONPATH=str(ROOT))
PASSWORDS = {"ana": "ana-secret-1", "bob": "bob-secret-2"}


def launch(*args, stdin: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), *map(str, args)], env=ENV, input=stdin,
                          capture_output=True, text=True, timeout=timeout)


def test_serve_refuses_a_non_loopback_address_without_logins(tmp_path):
    done = launch("serve", "--host", "0.0.0.0", "--port", "1", "--data-dir", tmp_path / "wb", timeout=120)
    assert done.returncode == 2
    assert "refusing to listen on 0.0.0.0 without logins" in done.stderr and "--auth-file" in done.stderr
    assert not (tmp_path / "wb").exists()  # refused before anything was made
    empty = tmp_path / "users.txt"
    empty.write_text("# nobody yet\n")
    done = launch("serve", "--host", "0.0.0.0", "--port", "1", "--data-dir", tmp_path / "wb", "--auth-file", empty,
                  timeout=120)
    assert done.returncode == 2 and "has no users" in done.stderr


def test_users_file_keeps_salted_scrypt_hashes_only(tmp_path):
    from services.users import UsersFile

    users = tmp_path / "users.txt"
    for name, password in [("ana", "same-password"), ("bob", "same-password")]:
        done = launch("users", "add", name, "--file", users, "--password-stdin", stdin=password + "\n")
        assert done.returncode == 0 and f"user {name} added" in done.stdout
    text = users.read_text()
    assert "same-password" not in text
    hashes = dict(line.split(":", 1) for line in text.splitlines() if not line.startswith("#"))
    assert set(hashes) == {"ana", "bob"} and hashes["ana"] != hashes["bob"]  # per-user salt
    assert all(h.startswith("scrypt$16384$8$1$") for h in hashes.values())
    assert oct(users.stat().st_mode & 0o777) == "0o600"
    check = UsersFile(users)
    assert check("ana", "same-password") and check("bob", "same-password")
    assert not check("ana", "same-passwor") and not check("carl", "same-password") and not check("ana", "")
    short = launch("users", "add", "carl", "--file", users, "--password-stdin", stdin="short\n")
    assert short.returncode == 2 and "at least 8 characters" in short.stderr
    assert launch("users", "list", "--file", users).stdout.split() == ["ana", "bob"]


@pytest.fixture(scope="module")
def secured(tmp_path_factory, synthetic_coco_module):
    """A real server with logins (ana, bob) and a 64 KB upload limit, on loopback."""
    root = tmp_path_factory.mktemp("secured")
    users = root / "users.txt"
    for name, password in PASSWORDS.items():
        assert launch("users", "add", name, "--file", users, "--password-stdin", stdin=password + "\n").returncode == 0
    data_dir = root / "wb"
    coco = synthetic_coco_module
    assert launch("import-coco", coco, "--images", coco.parent / "images", "--data-dir", data_dir).returncode == 0
    process, url = start_server(data_dir, ["--auth-file", str(users), "--max-upload-mb", "0.0625"])
    try:
        yield {"url": url, "data_dir": data_dir, "root": root, "users": users, "pid": process.pid}
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def synthetic_coco_module(tmp_path_factory):
    from conftest import make_synthetic_coco

    return make_synthetic_coco(tmp_path_factory.mktemp("coco"))


def client_of(secured, user):
    from gradio_client import Client

    return Client(secured["url"], auth=(user, PASSWORDS[user]), verbose=False)


def logged_in_http(secured, user):
    import httpx

    http = httpx.Client(base_url=secured["url"], timeout=60)
    response = http.post("login", data={"username": user, "password": PASSWORDS[user]})
    assert response.status_code == 200, response.text
    return http


def db_rows(data_dir: Path, sql: str) -> list[tuple]:
    from sqlalchemy import text

    from db.engine import open_database

    db = open_database(data_dir, migrate=False)
    try:
        with db.engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(sql))]
    finally:
        db.close()


def test_wrong_password_and_anonymous_requests_are_refused(secured):
    import httpx
    from gradio_client import Client

    with pytest.raises(Exception, match="(?i)login|auth|401"):
        Client(secured["url"], auth=("ana", "wrong-password"), verbose=False)
    with pytest.raises(Exception):
        Client(secured["url"], auth=("mallory", PASSWORDS["ana"]), verbose=False)
    with pytest.raises(Exception):
        Client(secured["url"], verbose=False)
    anonymous = httpx.post(secured["url"] + "gradio_api/call/save_annotations", timeout=60,
                           json={"data": [1, [], -1]})
    assert anonymous.status_code == 401
    bad = httpx.post(secured["url"] + "login", data={"username": "ana", "password": "nope"}, timeout=60)
    assert bad.status_code == 400


def test_every_annotation_change_records_the_logged_in_user(secured):
    ana, bob = client_of(secured, "ana"), client_of(secured, "bob")
    saved = ana.predict(1, [{"category": "car", "box": [1, 1, 20, 20]}, {"category": "sign", "box": [30, 5, 50, 25]}],
                        ana.predict(1, api_name="/instances")["revision"], api_name="/save_annotations")
    first, second = sorted(i["id"] for i in saved["instances"])
    rows = db_rows(secured["data_dir"], "SELECT id, created_by, updated_by FROM annotations WHERE image_id = 1")
    assert sorted(rows) == [(first, "ana", "ana"), (second, "ana", "ana")]
    # bob changes one box and keeps the other as it was
    keep = [i for i in saved["instances"] if i["id"] == second]
    changed = {"id": first, "category": "car", "box": [2, 2, 25, 25]}
    again = bob.predict(1, [changed, *keep], saved["saved_revision"], api_name="/save_annotations")
    assert again["saved_revision"] == saved["saved_revision"] + 1
    rows = dict((r[0], r[1:]) for r in db_rows(secured["data_dir"],
                                                "SELECT id, created_by, updated_by FROM annotations WHERE image_id = 1"))
    assert rows == {first: ("ana", "bob"), second: ("ana", "ana")}
    journal = db_rows(secured["data_dir"], "SELECT user FROM annotation_journal WHERE image_id = 1 ORDER BY id")
    assert journal[-2:] == [("ana",), ("bob",)]


def test_upload_size_limit_is_enforced_by_the_server(secured, tmp_path):
    rng = np.random.default_rng(0)
    big, small = tmp_path / "big.png", tmp_path / "small.png"
    Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(big)  # ~120 KB of noise
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(small)
    assert big.stat().st_size > 64 * 1024 > small.stat().st_size
    from gradio_client import handle_file

    ana = client_of(secured, "ana")
    before = db_rows(secured["data_dir"], "SELECT count(*) FROM images")[0][0]
    with pytest.raises(Exception, match="(?i)size|large|413"):
        ana.predict([handle_file(str(big))], "train", api_name="/upload_images")
    assert db_rows(secured["data_dir"], "SELECT count(*) FROM images")[0][0] == before
    added = ana.predict([handle_file(str(small))], "train", api_name="/upload_images")
    assert added["added"] == 1


def call(http, api_name: str, data: list) -> tuple[str, object]:
    """A raw call of an API endpoint (what any HTTP client can send): -> (event, data)."""
    response = http.post(f"gradio_api/call/{api_name}", json={"data": data})
    assert response.status_code == 200, response.text
    event_id = response.json()["event_id"]
    event, payload = None, None
    with http.stream("GET", f"gradio_api/call/{api_name}/{event_id}") as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                payload = json.loads(line.split(":", 1)[1].strip() or "null")
                if event in ("complete", "error"):
                    break
    return event, payload


def test_nothing_outside_the_served_folders_can_be_read(secured, tmp_path):
    data_dir = secured["data_dir"]
    secret = secured["root"] / "secret.txt"
    secret.write_text("top secret")
    exports = data_dir / "exports"
    (exports / "link.json").unlink(missing_ok=True)
    (exports / "link.json").symlink_to(secret)
    http = logged_in_http(secured, "ana")
    refused = [f"gradio_api/file={secret}", f"gradio_api/file={exports / 'link.json'}",
               f"gradio_api/file={exports}/../workbench.sqlite3", f"gradio_api/file={data_dir / 'workbench.sqlite3'}",
               "gradio_api/file=/etc/passwd"]
    for path in refused:
        response = http.get(path)
        assert response.status_code in (403, 404), (path, response.status_code)
        assert b"top secret" not in response.content and b"SQLite format" not in response.content
    # an export the server made is served (to a logged-in user)
    event, payload = call(http, "export_coco", ["rle", "all"])
    assert event == "complete", payload
    served = http.get(payload[0]["url"])
    assert served.status_code == 200 and served.json()["info"]["mask_format"] == "rle"


def test_client_paths_and_names_cannot_reach_outside_the_data_folder(secured, tmp_path):
    data_dir = secured["data_dir"]
    outside = secured["root"] / "outside.png"
    Image.fromarray(np.full((20, 20, 3), 7, np.uint8)).save(outside)
    http = logged_in_http(secured, "ana")
    images_before = db_rows(data_dir, "SELECT count(*) FROM images")[0][0]
    # a file on the server that the client did not upload
    event, payload = call(http, "upload_images", [[{"path": str(outside), "meta": {"_type": "gradio.FileData"}}],
                                                 "train"])
    assert event == "error"
    assert db_rows(data_dir, "SELECT count(*) FROM images")[0][0] == images_before
    # an uploaded file whose name climbs out of the folder is stored by its content hash
    with outside.open("rb") as handle:
        uploaded = http.post("gradio_api/upload", files={"files": ("../../../../escaped.png", handle, "image/png")})
    assert uploaded.status_code == 200, uploaded.text
    server_path = uploaded.json()[0]
    event, payload = call(http, "upload_images", [[{"path": server_path, "orig_name": "../../../../escaped.png",
                                                    "meta": {"_type": "gradio.FileData"}}], "train"])
    assert event == "complete", payload
    image_id = payload[0]["image_ids"][0]
    stored, name = db_rows(data_dir, f"SELECT stored_path, file_name FROM images WHERE id = {image_id}")[0]
    assert "/" not in name and ".." not in name
    assert (data_dir / stored).resolve().is_relative_to(data_dir.resolve())
    assert not list(secured["root"].glob("**/escaped.png")) and not Path("/escaped.png").exists()
    # export names: a mask format that is a path is refused before any file is made
    event, payload = call(http, "export_coco", ["../../../../escaped", "all"])
    assert event == "error"
    assert not list(secured["root"].glob("**/escaped*")) and not list(data_dir.glob("exports/*escaped*"))
    # image ids are numbers, nothing else
    event, payload = call(http, "propose", ["../../etc/passwd", 0.5])
    assert event == "error"


def test_reviews_undo_proposals_and_merges_record_their_user(database, synthetic_coco):
    from db.annotations import get_annotations, save_annotations, set_review_state, undo, InstanceData
    from db.categories import merge_categories
    from db.coco_import import import_coco

    import_coco(database, synthetic_coco, synthetic_coco.parent / "images")
    revision, rows = get_annotations(database, 1, decode_masks=False)
    added = save_annotations(database, 1, [InstanceData.from_row(r) for r in rows]
                             + [InstanceData(category_id=3, box=(1, 1, 9, 9), review_state="proposed")],
                             seen_revision=revision, user="ana")
    _, rows = get_annotations(database, 1, decode_masks=False)
    new = next(r for r in rows if r["created_by"] == "ana")
    assert new["updated_by"] == "ana" and all(r["updated_by"] is None for r in rows if r is not new)  # others unchanged
    reviewed = set_review_state(database, 1, [new["id"]], "accepted", seen_revision=added, user="bob")
    _, rows = get_annotations(database, 1, decode_masks=False)
    assert {r["id"]: (r["created_by"], r["updated_by"]) for r in rows}[new["id"]] == ("ana", "bob")
    undo(database, 1, seen_revision=reviewed, user="carl")  # back to before the review: carl changed that one
    _, rows = get_annotations(database, 1, decode_masks=False)
    assert {r["id"]: (r["review_state"], r["updated_by"]) for r in rows}[new["id"]] == ("proposed", "carl")
    assert all(r["updated_by"] is None for r in rows if r["id"] != new["id"])
    merge_categories(database, 12, 7, user="dora")
    _, rows = get_annotations(database, 2, decode_masks=False)
    assert {r["updated_by"] for r in rows if r["category_id"] == 7} >= {"dora"}
    assert {r["updated_by"] for r in rows if r["category_id"] == 3} == {None}


def test_wrong_passwords_lock_the_name_for_a_growing_time(tmp_path):
    """Issue 16, item 7 (the rule, with a clock of our own): 5 wrong passwords in a row lock the name for 2 s,
    each further one doubles it; while locked even the right password is refused, and those refusals do not
    lengthen the lock; a right password clears the count."""
    from services.users import UsersFile, set_password

    path = tmp_path / "users.txt"
    set_password(path, "ana", PASSWORDS["ana"])
    now = [1000.0]
    users = UsersFile(path, clock=lambda: now[0])
    assert [users("ana", "wrong") for _ in range(5)] == [False] * 5
    assert users("ana", PASSWORDS["ana"]) is False  # locked
    now[0] += 2.1
    assert users("ana", "wrong") is False  # the 6th: locked for 4 s
    now[0] += 3.0
    assert users("ana", PASSWORDS["ana"]) is False
    now[0] += 1.1
    assert users("ana", PASSWORDS["ana"]) is True  # and the count starts again
    assert [users("ana", "wrong") for _ in range(4)] == [False] * 4 and users("ana", PASSWORDS["ana"]) is True
    assert users("bob", "x") is False  # an unknown name is throttled the same way, without a user to find


def test_the_server_throttles_wrong_passwords(secured):
    """Issue 16, item 7 through the real server: 60 wrong passwords used to be tried in 4 s; now the sixth
    attempt is refused even with the right password until the lock passes (bob: no other test logs in as him
    after this one)."""
    import httpx

    login = secured["url"] + "login"
    for _ in range(5):
        assert httpx.post(login, data={"username": "bob", "password": "guess"}, timeout=60).status_code == 400
    right = {"username": "bob", "password": PASSWORDS["bob"]}
    assert httpx.post(login, data=right, timeout=60).status_code == 400  # locked
    time.sleep(2.2)
    assert httpx.post(login, data=right, timeout=60).status_code == 200


def test_failures_for_one_name_do_not_lock_other_names_out_of_the_address(secured):
    """Issue 23, item 7: 10 failed logins for one name from an address made every user behind that address wait
    (an office behind one NAT). Now the address is counted per name: that name gets 429, even with a right
    password, while others log in from the same address."""
    import httpx

    login = secured["url"] + "login"
    for _ in range(10):
        assert httpx.post(login, data={"username": "oscar", "password": "guess"}, timeout=60).status_code == 400
    locked = httpx.post(login, data={"username": "oscar", "password": "guess"}, timeout=60)
    assert locked.status_code == 429 and "for this name from this address" in locked.json()["error"]
    right = {"username": "ana", "password": PASSWORDS["ana"]}
    assert httpx.post(login, data=right, timeout=60).status_code == 200
    assert httpx.post(login, data={"username": "ana", "password": "guess"}, timeout=60).status_code == 400


# ---- issue 23: hostile HTTP, logins -------------------------------------------------------------------------------

def raw_exchange(url: str, head: str, body_chunks=(), timeout: float = 60) -> tuple[int, str, int]:
    """One request written byte by byte (any headers, even contradicting ones, which HTTP clients refuse to send):
    the head, then ``body_chunks`` sent from another thread while the answer is read -> (status, answer's
    body, body bytes the server's socket took before the answer)."""
    parts = urlsplit(url)
    connection = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
    sent = [0]

    def send_body():
        try:
            for chunk in body_chunks:
                connection.sendall(chunk)
                sent[0] += len(chunk)
        except OSError:  # the server answered and closed the connection
            pass

    connection.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
    sender = threading.Thread(target=send_body, daemon=True)
    sender.start()
    try:
        response = http.client.HTTPResponse(connection)
        response.begin()
        taken = sent[0]
        body = response.read().decode(errors="replace")
    finally:
        with contextlib.suppress(OSError):
            connection.shutdown(socket.SHUT_RDWR)
        connection.close()
        sender.join(timeout)
    return response.status, body, taken


def chunked(total: int, size: int = 1 << 20):
    """``total`` bytes as HTTP/1.1 chunks of ``size``."""
    block = f"{size:x}\r\n".encode() + b"7" * size + b"\r\n"
    for _ in range(total // size):
        yield block
    yield b"0\r\n\r\n"


def cookie_header(http) -> str:
    return "; ".join(f"{cookie.name}={cookie.value}" for cookie in http.cookies.jar)


def resident_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_a_request_with_both_content_length_and_transfer_encoding_is_refused_unread(secured):
    """Issue 23, item 2: `Content-Length: 10` with `Transfer-Encoding: chunked` had its whole chunked body read
    (200 MB, memory from 1 GB to 2.2 GB). Now it gets 400 before its body is read: of 100 MB sent by a logged-in
    user only what the sockets buffer leaves the client, and the server's memory does not grow."""
    http = logged_in_http(secured, "ana")
    host = urlsplit(secured["url"]).netloc
    before = resident_bytes(secured["pid"])
    status, body, taken = raw_exchange(
        secured["url"], f"POST /gradio_api/queue/join HTTP/1.1\nHost: {host}\nCookie: {cookie_header(http)}\n"
                        "Content-Type: application/json\nContent-Length: 10\nTransfer-Encoding: chunked\n",
        chunked(100 << 20))
    assert taken < 40 << 20, f"{taken / 2**20:.0f} MB of the body went in"
    assert resident_bytes(secured["pid"]) - before < 40 << 20
    assert status == 400 and "both Content-Length and Transfer-Encoding" in json.loads(body)["error"]
    assert http.get("gradio_api/info").status_code == 200  # and the server goes on


@pytest.mark.parametrize("route", ["gradio_api/queue/join", "gradio_api/upload", "gradio_api/call/save_annotations"])
def test_anonymous_requests_are_refused_before_their_body_is_read(secured, route):
    """Issue 23, item 2: without a session the answer (401) comes before the body, which is never sent here:
    the server used to wait for it (and read all of it) before saying no. Uploads too."""
    host = urlsplit(secured["url"]).netloc
    for framing in ("Content-Length: 1000000", "Transfer-Encoding: chunked"):
        status, body, _ = raw_exchange(secured["url"], f"POST /{route} HTTP/1.1\nHost: {host}\n"
                                                       f"Content-Type: application/json\n{framing}\n")
        assert status == 401 and "log in first" in json.loads(body)["error"], (route, framing, body)


def test_the_body_never_exceeds_the_limit_or_its_declared_length():
    """Issue 23, item 2 (the ASGI layer): whatever the headers say, the app behind RequestSizeLimit never
    receives more than the limit, nor more than a declared Content-Length; even a handler that swallows the
    refusal and reads on gets nothing more, and its own answer is not sent after the refusal."""
    import asyncio

    from app.guard import RequestSizeLimit

    def run(headers, chunks):
        given, answers, supplied = [], [], [0]

        async def client_receive():
            supplied[0] += 1
            if supplied[0] > len(chunks):
                return {"type": "http.disconnect"}
            return {"type": "http.request", "body": chunks[supplied[0] - 1], "more_body": supplied[0] < len(chunks)}

        async def greedy_app(scope, receive, send):
            for _ in range(len(chunks) + 2):
                try:
                    message = await receive()
                    given.append(len(message.get("body", b"")))
                except Exception:  # noqa: BLE001 (a hostile handler)
                    pass
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

        async def send(message):
            answers.append(message)

        scope = {"type": "http", "method": "POST", "path": "/gradio_api/call/x", "root_path": "", "headers": headers}
        asyncio.run(RequestSizeLimit(greedy_app, max_bytes=1000)(scope, client_receive, send))
        status = next(m["status"] for m in answers if m["type"] == "http.response.start")
        error = json.loads(b"".join(m.get("body", b"") for m in answers if m["type"] == "http.response.body"))
        return sum(given), status, error["error"], supplied[0]

    endless = [b"x" * 100] * 50
    received, status, error, supplied = run([(b"transfer-encoding", b"chunked")], endless)
    assert received <= 1000 and status == 413 and "--max-request-mb" in error and supplied <= 11
    received, status, error, _ = run([(b"content-length", b"150")], [b"x" * 100] * 3)
    assert received <= 150 and status == 400 and "longer than its Content-Length" in error
    received, status, error, _ = run([(b"content-length", b"10"), (b"transfer-encoding", b"chunked")], endless)
    assert received == 0 and status == 400 and "both Content-Length and Transfer-Encoding" in error
    received, status, error, _ = run([(b"content-length", b"10"), (b"content-length", b"99")], endless)
    assert received == 0 and status == 400 and "one whole number" in error


class GatedUsers:
    """A users file (services.users.UsersFile) whose checks of names starting with "held" wait until the test
    lets them go, recording on which threads and how many at a time they ran."""

    def __init__(self, path):
        from services.users import UsersFile

        class Gated(UsersFile):
            def verify(inner, username, password):
                if not str(username).startswith("held"):
                    return UsersFile.verify(inner, username, password)
                with self.lock:
                    self.running += 1
                    self.peak = max(self.peak, self.running)
                    self.threads.add(threading.current_thread().name)
                self.entered.release()
                try:
                    self.release.wait(300)
                    return UsersFile.verify(inner, username, password)
                finally:
                    with self.lock:
                        self.running -= 1

        self.users = Gated(path)
        self.lock, self.running, self.peak, self.threads = threading.Lock(), 0, 0, set()
        self.entered, self.release = threading.Semaphore(0), threading.Event()


@contextlib.contextmanager
def in_process_server(root: Path, auth=None):
    """The workbench (empty SQLite database) served in this process on a free port -> its URL."""
    from app.ui import launch_app
    from db.engine import open_database

    db = open_database(root / "data")
    port = free_port()
    demo = launch_app(db, "127.0.0.1", port, block=False, auth=auth)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
        db.close()


@pytest.fixture(scope="module")
def logins(tmp_path_factory):
    """An in-process server with logins (ana, bob) whose password checks of "held..." names wait for the test."""
    from services.users import set_password

    root = tmp_path_factory.mktemp("logins")
    for name, password in PASSWORDS.items():
        set_password(root / "users.txt", name, password)
    gated = GatedUsers(root / "users.txt")
    with in_process_server(root, auth=gated.users) as url:
        yield {"url": url, "gated": gated}
    gated.release.set()


def test_password_checks_run_off_the_event_loop_a_few_at_a_time(logins):
    """Issue 23, item 7: scrypt ran on the event loop, so 8 parallel wrong logins held every other request for
    up to 2 s. Now the checks run in LoginCheck.WORKERS threads: while both are inside a check (held there by
    the test) the server still answers the login page and a logged-in user's request; no third check starts;
    and at most LoginThrottle.MAX_AT_ONCE logins per address wait their turn, the others get 429 at once."""
    import httpx

    from app.guard import LoginCheck, LoginThrottle

    url, gated = logins["url"], logins["gated"]
    ana = logged_in_http({"url": url}, "ana")
    statuses, start = [], threading.Barrier(8)

    def attempt(k):
        start.wait()
        statuses.append(httpx.post(url + "login", data={"username": f"held{k}", "password": "wrong"},
                                   timeout=300).status_code)

    attempts = [threading.Thread(target=attempt, args=(k,)) for k in range(8)]
    try:
        for thread in attempts:
            thread.start()
        for _ in range(LoginCheck.WORKERS):
            assert gated.entered.acquire(timeout=120), "the password checks did not run side by side"
        assert httpx.get(url, timeout=120).status_code == 200  # answered while both checks are held
        assert ana.get("gradio_api/info", timeout=120).status_code == 200
        deadline = time.monotonic() + 120
        while len(statuses) < 8 - LoginThrottle.MAX_AT_ONCE and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        gated.release.set()
        for thread in attempts:
            thread.join(300)
    assert sorted(statuses) == [400] * LoginThrottle.MAX_AT_ONCE + [429] * (8 - LoginThrottle.MAX_AT_ONCE)
    assert gated.peak == LoginCheck.WORKERS
    assert gated.threads and all(name.startswith("login-check") for name in gated.threads)


def test_the_login_route_is_throttled_however_its_path_is_spelled(logins):
    """Issue 23, item 7: `POST /login/` skipped the per-address throttle (it looked for a path ending in
    /login). Now every request the router sends to the login handler counts: 10 failures spelled /login/ and
    /%6Cogin lock that name from this address (429 on /login)."""
    url = logins["url"]
    host = urlsplit(url).netloc
    form = "username=eve&password=guess"
    for k in range(10):
        path = "/login/" if k % 2 else "/%6Cogin"
        status, _, _ = raw_exchange(url, f"POST {path} HTTP/1.1\nHost: {host}\nConnection: close\n"
                                         "Content-Type: application/x-www-form-urlencoded\n"
                                         f"Content-Length: {len(form)}\n", [form.encode()])
        assert status == 400, (path, status)
    status, body, _ = raw_exchange(url, f"POST /login HTTP/1.1\nHost: {host}\nConnection: close\n"
                                        "Content-Type: application/x-www-form-urlencoded\n"
                                        f"Content-Length: {len(form)}\n", [form.encode()])
    assert status == 429 and "too many failed logins" in body


def test_the_guards_find_routes_as_the_router_does():
    """The guards decide by the route the router picks (app.guard.routed_path), for Gradio's real app: the login
    route with or without its slash and under a root_path, the upload route, and nothing else."""
    import gradio as gr
    from gradio.routes import App

    from app.guard import LOGIN_ROUTES, UPLOAD_ROUTE, LoginThrottle, routed_path

    with gr.Blocks() as demo:
        gr.Markdown("x")
    app = App.create_app(demo)

    def scope(method, path, root_path=""):
        return {"type": "http", "method": method, "path": path, "root_path": root_path, "headers": [], "app": app}

    for path, root in [("/login", ""), ("/login/", ""), ("/wb/login", "/wb"), ("/wb/login/", "/wb")]:
        assert routed_path(scope("POST", path, root)) in LOGIN_ROUTES, (path, root)
        assert LoginThrottle.is_login(scope("POST", path, root)), (path, root)
    assert routed_path(scope("POST", "/gradio_api/upload")) == UPLOAD_ROUTE
    assert routed_path(scope("POST", "/gradio_api/queue/join")) == "/gradio_api/queue/join"
    assert not LoginThrottle.is_login(scope("POST", "/gradio_api/queue/join"))
    assert routed_path(scope("GET", "/login")) is None  # the login route takes POST only


def test_many_names_from_one_address_make_the_address_wait():
    """Issue 23, item 7, the per-address cap over all names (a clock of our own): LoginThrottle lets one
    address fail FREE_FAILURES times per name, and ADDRESS_FREE_FAILURES times over all names before every
    name from it waits; the wait passes and a success clears the address's count."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from app.guard import LoginThrottle

    async def login(request):
        form = await request.form()
        ok = form.get("password") == "right"
        return JSONResponse({"success": ok}, status_code=200 if ok else 400)

    now = [1000.0]
    app = Starlette(routes=[Route("/login", login, methods=["POST"])],
                    middleware=[Middleware(LoginThrottle, clock=lambda: now[0])])
    client = TestClient(app)
    cap = LoginThrottle.ADDRESS_FREE_FAILURES
    names = [f"user{k}" for k in range(cap)]
    assert all(client.post("/login", data={"username": name, "password": "guess"}).status_code == 400
               for name in names)
    refused = client.post("/login", data={"username": "ana", "password": "right"})
    assert refused.status_code == 429 and "from this address" in refused.json()["error"]
    now[0] += 2.1
    assert client.post("/login", data={"username": "ana", "password": "right"}).status_code == 200
    assert client.post("/login", data={"username": "user0", "password": "guess"}).status_code == 400


def test_the_users_file_is_read_again_when_it_changes(tmp_path):
    """Issue 23, item 8 (the users file): removed users and old passwords stop working without a restart, even
    for changes quicker than the file's time stamps; a file that cannot be read lets nobody in."""
    from services.users import UsersFile, remove_user, set_password

    path = tmp_path / "users.txt"
    set_password(path, "ana", "first-password")
    set_password(path, "bob", PASSWORDS["bob"])
    users = UsersFile(path)
    assert users("ana", "first-password")
    set_password(path, "ana", "other-password")  # same size, within the same time stamp tick
    assert not users("ana", "first-password") and users("ana", "other-password")
    remove_user(path, "bob")
    assert not users("bob", PASSWORDS["bob"])
    text = path.read_text()
    path.write_text(text + "garbage line\n")
    assert not users("ana", "other-password") and "cannot be read" in users.problem
    path.write_text(text)
    assert users("ana", "other-password") and users.problem is None


def test_removed_users_and_changed_passwords_end_their_sessions(secured):
    """Issue 23, item 8, through the real server and `launch.py users`: after a new password only the new one
    logs in and the old session gets 401; after `users remove` the user's sessions get 401 and the user cannot
    log in; others keep theirs."""
    import httpx

    url, users = secured["url"], secured["users"]

    def login(name, password):
        http = httpx.Client(base_url=url, timeout=60)
        return http, http.post("login", data={"username": name, "password": password}).status_code

    assert launch("users", "add", "dora", "--file", users, "--password-stdin", stdin="dora-first-1\n").returncode == 0
    dora, status = login("dora", "dora-first-1")
    assert status == 200 and dora.get("gradio_api/info").status_code == 200
    ana = logged_in_http(secured, "ana")
    assert launch("users", "add", "dora", "--file", users, "--password-stdin", stdin="dora-second-2\n").returncode == 0
    assert dora.get("gradio_api/info").status_code == 401
    assert login("dora", "dora-first-1")[1] == 400
    dora, status = login("dora", "dora-second-2")
    assert status == 200 and dora.get("gradio_api/info").status_code == 200
    assert launch("users", "remove", "dora", "--file", users).returncode == 0
    refused = dora.post("gradio_api/call/overview", json={"data": []})
    assert refused.status_code == 401 and "log in first" in refused.json()["error"]
    assert login("dora", "dora-second-2")[1] == 400
    assert ana.get("gradio_api/info").status_code == 200


def test_null_and_foreign_origins_cannot_change_anything_with_logins(secured):
    """Issue 23: with logins there was no Origin check at all. Now a logged-in browser's request that changes
    something is refused (403) when its Origin is another site, another port or null (a sandboxed frame)."""
    http = logged_in_http(secured, "ana")
    port = urlsplit(secured["url"]).port
    for origin in ("http://evil.example", f"http://127.0.0.1:{port + 1}", "null"):
        refused = http.post("gradio_api/call/overview", json={"data": []}, headers={"Origin": origin})
        assert refused.status_code == 403 and "Origin" in refused.json()["error"], origin
    same = http.post("gradio_api/call/overview", json={"data": []}, headers={"Origin": f"http://127.0.0.1:{port}"})
    assert same.status_code == 200


def test_a_null_origin_cannot_upload_without_logins(tmp_path):
    """Issue 23: without logins `Origin: null` (a sandboxed iframe) counted as no Origin and could upload. Now it
    is refused like another site's page, as is a page of another port on the same machine."""
    import httpx

    with in_process_server(tmp_path) as url:
        port = urlsplit(url).port
        files = {"files": ("a.png", b"\x89PNG\r\n\x1a\n", "image/png")}
        for origin in ("null", f"http://127.0.0.1:{port + 1}"):
            refused = httpx.post(url + "gradio_api/upload", files=files, headers={"Origin": origin}, timeout=60)
            assert refused.status_code == 403, origin
        same = httpx.post(url + "gradio_api/upload", files=files, headers={"Origin": f"http://127.0.0.1:{port}"},
                          timeout=60)
        assert same.status_code == 200

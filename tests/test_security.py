"""Security through the real server (`launch.py serve` subprocess): loopback unless logins are set up,
hashed passwords, the user recorded on every change, the upload size limit, nothing outside the data folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_serve import ROOT, serving

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
    with serving(data_dir, extra_args=["--auth-file", str(users), "--max-upload-mb", "0.0625"]) as url:
        yield {"url": url, "data_dir": data_dir, "root": root}


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


def test_the_server_throttles_failed_logins_per_client_address(secured):
    """Issue 16, item 7, per client address (spraying many names from one address): after 10 failed logins in
    a row the address gets 429, even with a right password, until the lock passes; a success clears it."""
    import httpx

    login = secured["url"] + "login"
    for k in range(10):
        assert httpx.post(login, data={"username": f"user{k}", "password": "guess"}, timeout=60).status_code == 400
    right = {"username": "ana", "password": PASSWORDS["ana"]}
    locked = httpx.post(login, data=right, timeout=60)
    assert locked.status_code == 429 and "too many failed logins" in locked.json()["error"]
    time.sleep(2.2)
    assert httpx.post(login, data=right, timeout=60).status_code == 200
    assert httpx.post(login, data={"username": "ana", "password": "guess"}, timeout=60).status_code == 400  # counts anew

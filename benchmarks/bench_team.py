#!/usr/bin/env python
"""A team on shared photos (issue 26): 2-5 simulated labellers edit the same images at once for a bounded time,
through the review canvas's save path and through the headless API, on SQLite and PostgreSQL; afterwards every
acknowledged edit is checked against the database.

    python benchmarks/bench_team.py --labellers 4 --seconds 60                    # SQLite
    python benchmarks/bench_team.py --labellers 4 --seconds 60 --postgres postgresql://USER@HOST:PORT/DB
    python benchmarks/bench_team.py --labellers 2 --seconds 5 --photos 2         # smoke run

The database: PHOTOS synthetic photos of 256x192 with 12 accepted instances each (rectangles in three classes).
Labeller k: reads a photo (revision and instances), thinks 0-40 ms (others save meanwhile), then edits one
instance: with probability --own its "own" ones (instance id % labellers == k: people working on different
objects of one image), else any one (two people on the same object). Edits: another class, accept / reject,
a new mask, delete, or a new instance. Even labellers use the canvas's path (Editor.apply_edits, a batch of
one edit, as app.handlers.on_canvas_save), odd ones the API over HTTP (/instances, then /save_annotations with
the whole list read, edited: what a script does).

Counted: edits acknowledged; conflicts raised on an edit of another instance than those the refusal names
("phantom", goal 0); same-instance conflicts, and whether the refused edit is in the journal as a lost version;
acknowledged edits lost: per instance and field, the last acknowledged edit (by the revision it made) must be
what the database holds at the end (goal 0).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from common import REPO, loadavg, stamp


WIDTH, HEIGHT, PER_PHOTO = 256, 192, 12
CLASSES = {1: "car", 2: "ball", 3: "sign"}  # ids in the order add_category gives them
KINDS = ("class", "review", "mask", "delete", "add")


def rect(x: int, y: int, w: int, h: int) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[y:y + h, x:x + w] = True
    return mask


def make_database(folder: Path, url: str | None, photos: int):
    """-> (the open database, image ids): synthetic photos, each with PER_PHOTO accepted instances."""
    from PIL import Image

    from db.annotations import InstanceData, save_annotations_unchecked
    from db.categories import add_category
    from db.engine import open_database
    from db.uploads import add_images

    db = open_database(folder / "data", url)
    for category_id, name in CLASSES.items():
        assert add_category(db, name) == category_id
    files = []
    for k in range(photos):
        pixels = np.full((HEIGHT, WIDTH, 3), 30 + 40 * k, np.uint8)
        files.append(folder / f"photo{k}.png")
        Image.fromarray(pixels).save(files[-1])
    image_ids = add_images(db, files).image_ids
    for image_id in image_ids:
        save_annotations_unchecked(db, image_id, [
            InstanceData(category_id=list(CLASSES)[i % 3], mask=rect(4 + (i % 6) * 40, 4 + (i // 6) * 90, 30, 60),
                         source="drawn") for i in range(PER_PHOTO)])
    return db, image_ids


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acknowledged: list[dict] = []  # {"image", "id", "fields", "revision", "who"}
        self.refused: list[dict] = []  # conflicts: {"image", "target", "read", "now", ...}
        self.phantom: list[dict] = []
        self.same_instance: list[dict] = []
        self.errors: list[str] = []
        self.gone: list[dict] = []  # edits of an instance someone else had deleted: refused as "gone"
        self.attempts = 0

    def add(self, kind: str, item) -> None:
        with self.lock:
            getattr(self, kind).append(item)


def plan_edit(rng, instances: list[dict], k: int, labellers: int, own_share: float) -> tuple[str, dict | None]:
    """(kind, the instance it edits or None for a new one)."""
    kind = KINDS[rng.integers(len(KINDS))]
    if kind == "add" or not instances:
        return "add", None
    own = [i for i in instances if i["id"] % labellers == k]
    pool = own if own and rng.random() < own_share else instances
    return kind, pool[rng.integers(len(pool))]


def new_fields(rng, kind: str, target: dict | None) -> dict:
    """What the edit sets (the fields checked at the end) and the values it sends."""
    from db import masks

    if kind == "class":
        return {"category_id": int([c for c in CLASSES if c != target["category_id"]][rng.integers(2)]),
                "review_state": "accepted"}
    if kind == "review":
        return {"review_state": "rejected" if target["review_state"] == "accepted" else "accepted"}
    if kind == "delete":
        return {"deleted": True}
    x, y = int(rng.integers(0, WIDTH - 40)), int(rng.integers(0, HEIGHT - 40))
    counts = masks.encode(rect(x, y, int(rng.integers(8, 40)), int(rng.integers(8, 40))))
    category = target["category_id"] if target else int(list(CLASSES)[rng.integers(3)])
    return {"mask_rle": counts, "category_id": category, "review_state": "accepted"}


def canvas_edit(wb, image_id: int, read: dict, kind: str, target: dict | None, fields: dict, user: str):
    """One edit through the canvas's save path -> (the revision it made, the instance id) or a ConflictError."""
    if kind == "class":
        edit = {"kind": "class", "id": target["id"], "category_id": fields["category_id"]}
    elif kind == "review":
        edit = {"kind": "review", "ids": [target["id"]], "state": fields["review_state"]}
    elif kind == "delete":
        edit = {"kind": "delete", "ids": [target["id"]]}
    else:
        edit = {"kind": "mask", "tool": "brush", "counts": fields["mask_rle"], "category_id": fields["category_id"],
                **({"id": target["id"]} if target else {"temp_id": -1})}
    result = wb.editor.apply_edits(image_id, [edit], read["revision"], user)
    if result.error is not None:
        raise result.error
    return result.revision, target["id"] if target else result.created.get(-1)


def api_edit(client, image_id: int, read: dict, kind: str, target: dict | None, fields: dict):
    """One edit through /save_annotations (the whole list read, edited) -> (saved revision, instance id)."""
    from db import masks

    items = [dict(i) for i in read["instances"]]
    for item in items:
        item.pop("shown", None)
        item.pop("category", None)
    if kind == "delete":
        items = [i for i in items if i["id"] != target["id"]]
    elif target is not None:
        item = next(i for i in items if i["id"] == target["id"])
        if "mask_rle" in fields:
            item["mask"] = masks.rle_dict(fields["mask_rle"], HEIGHT, WIDTH)
            item["box"] = None
        item.update({k: v for k, v in fields.items() if k in ("category_id", "review_state")})
    else:
        items.append({"category_id": fields["category_id"], "mask": masks.rle_dict(fields["mask_rle"], HEIGHT, WIDTH),
                      "review_state": "accepted"})
    before = {i["id"] for i in read["instances"]}
    out = client.predict(image_id, items, read["revision"], api_name="/save_annotations")
    if target is not None:
        return out["saved_revision"], target["id"]
    made = [i for i in out["instances"] if i["id"] not in before and i["mask"]
            and i["mask"]["counts"] == masks.rle_dict(fields["mask_rle"], HEIGHT, WIDTH)["counts"]]
    return out["saved_revision"], made[-1]["id"] if made else None


CURRENT = re.compile(r"now (\d+)\)")  # a refusal's text: "(revision R, now N)"


def labeller(k: int, args, wb, url: str, image_ids: list[int], tally: Tally, stop: float) -> None:
    from db.annotations import ConflictError

    rng = np.random.default_rng(1000 + k)
    user = f"labeller{k}"
    api = k % 2 == 1
    if api:
        from gradio_client import Client

        client = Client(url, verbose=False)
    while time.monotonic() < stop:
        image_id = int(image_ids[rng.integers(len(image_ids))])
        read = client.predict(image_id, api_name="/instances") if api else wb.instances(image_id)
        time.sleep(float(rng.uniform(0, 0.04)))
        kind, target = plan_edit(rng, read["instances"], k, args.labellers, args.own)
        fields = new_fields(rng, kind, target)
        with tally.lock:
            tally.attempts += 1
        try:
            revision, ann_id = (api_edit(client, image_id, read, kind, target, fields) if api
                                else canvas_edit(wb, image_id, read, kind, target, fields, user))
        except Exception as exc:  # noqa: BLE001 (a refusal: the API's comes as the client's AppError)
            text = str(exc)
            if "(anymore)" in text or "is gone from image" in text:
                tally.add("gone", {"image": image_id, "kind": kind, "target": target and target["id"]})
                continue  # someone else deleted the instance first: said so, nothing to lose
            if not isinstance(exc, ConflictError) and "changed by someone else" not in text:
                tally.add("errors", f"{kind}: {text[:200]}")
                continue
            now = getattr(exc, "current", None)
            if now is None:
                found = CURRENT.search(text)
                now = int(found.group(1)) if found else None
            tally.add("refused", {"image": image_id, "kind": kind, "target": target and target["id"],
                                  "read": read["revision"], "now": now, "user": None if api else user,
                                  "journal": getattr(exc, "journal_id", None), "api": api, "text": text[:160]})
            continue
        if ann_id is not None:
            tally.add("acknowledged", {"image": image_id, "id": ann_id, "fields": fields, "revision": revision,
                                       "who": user})


def classify_refusals(db, tally: Tally) -> None:
    """A refusal is a same-instance conflict when someone else's change between the revision the labeller read
    and the one it was refused at touched the instance it edited (the journal's diffs say which instances each
    change deleted, modified or added); else a phantom conflict. Judged from the journal, not from the refusal's
    text, so a server that names no instances is judged alike."""
    from sqlalchemy import select

    from db.models import JournalEntry

    with db.session() as session:
        entries = list(session.scalars(select(JournalEntry).where(JournalEntry.action != "conflict")))
    for refusal in tally.refused:
        touched = refusal["target"] is not None and refusal["now"] is not None and any(
            entry.image_id == refusal["image"] and refusal["read"] <= entry.revision < refusal["now"]
            and (refusal["target"] in (entry.added or []) or any(row.get("id") == refusal["target"]
                                                                 for row in entry.snapshot or []))
            for entry in entries)
        (tally.same_instance if touched else tally.phantom).append(refusal)


def lost_edits(db, tally: Tally) -> list[dict]:
    """Acknowledged edits whose effect is not in the database and that no later acknowledged edit replaced."""
    from db.annotations import get_annotations

    final = {}
    for image_id in {a["image"] for a in tally.acknowledged}:
        final.update({(image_id, r["id"]): r for r in get_annotations(db, image_id, decode_masks=False)[1]})
    last: dict[tuple, dict] = {}
    for edit in sorted(tally.acknowledged, key=lambda a: a["revision"]):
        for field in edit["fields"]:
            last[(edit["image"], edit["id"], field)] = edit
    lost = []
    for (image_id, ann_id, field), edit in last.items():
        row = final.get((image_id, ann_id))
        deleted_later = last.get((image_id, ann_id, "deleted"))
        if deleted_later is not None and deleted_later["revision"] >= edit["revision"]:
            if row is not None:
                lost.append({**edit, "field": "deleted", "found": "still there"})
            continue
        if row is None:
            lost.append({**edit, "field": field, "found": "gone"})
        elif row[field] != edit["fields"][field]:
            lost.append({**edit, "field": field, "found": row[field]})
    return lost


def journal_of(db, image_id: int, ann_id: int) -> list[dict]:
    """The journal's entries of an image that touched an instance: revision, action, user, how."""
    from sqlalchemy import select

    from db.models import JournalEntry

    with db.session() as session:
        entries = list(session.scalars(select(JournalEntry).where(JournalEntry.image_id == image_id)
                                       .order_by(JournalEntry.id)))
    out = []
    for entry in entries:
        rows = [row for row in entry.snapshot or [] if row.get("id") == ann_id]
        if ann_id in (entry.added or []) or rows:
            out.append({"revision": entry.revision, "action": entry.action, "user": entry.user,
                        "content": entry.content, "added": ann_id in (entry.added or []),
                        "rows": [{k: v for k, v in row.items() if k not in ("mask_rle", "mask_polygons")}
                                 for row in rows]})
    return out


def journalled(db, tally: Tally) -> int:
    """Same-instance refusals whose edit is in the journal as a lost version (content "lost", its instance)."""
    from sqlalchemy import select

    from db.models import JournalEntry

    with db.session() as session:
        entries = {e.id: e for e in session.scalars(select(JournalEntry).where(JournalEntry.action == "conflict"))}
    found = 0
    for refusal in tally.same_instance:
        entry = entries.get(refusal["journal"]) if refusal["journal"] else next(
            (e for e in entries.values() if e.image_id == refusal["image"] and e.user == refusal["user"]
             and any(row.get("id") == refusal["target"] for row in e.snapshot)), None)
        found += entry is not None and any(row.get("id") == refusal["target"] and row.get("conflict")
                                           for row in entry.snapshot)
    return found


def run(args, url: str | None, backend: str) -> dict:
    from app.ui import launch_app
    from services.workbench import Workbench

    with tempfile.TemporaryDirectory() as folder:
        db, image_ids = make_database(Path(folder), url, args.photos)
        port = args.port
        demo = launch_app(db, "127.0.0.1", port, block=False)
        wb = Workbench(db, device="cpu")
        tally = Tally()
        load_before = loadavg()
        stop = time.monotonic() + args.seconds
        threads = [threading.Thread(target=labeller, args=(k, args, wb, f"http://127.0.0.1:{port}/", image_ids,
                                                            tally, stop)) for k in range(args.labellers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        classify_refusals(db, tally)
        lost = lost_edits(db, tally)
        for item in lost[:3]:  # what the journal says of a lost instance (to find why)
            item["journal"] = journal_of(db, item["image"], item["id"])
            item["acknowledged_edits"] = [a for a in tally.acknowledged
                                          if a["image"] == item["image"] and a["id"] == item["id"]]
        out = {"backend": backend, "labellers": args.labellers, "seconds": args.seconds, "photos": args.photos,
               "own_share": args.own, "attempts": tally.attempts, "acknowledged": len(tally.acknowledged),
               "acknowledged_lost": len(lost), "phantom_conflicts": len(tally.phantom),
               "same_instance_conflicts": len(tally.same_instance),
               "same_instance_journalled": journalled(db, tally), "already_deleted": len(tally.gone),
               "other_errors": len(tally.errors),
               "error_examples": tally.errors[:3], "lost_examples": lost[:3], "phantom_examples": tally.phantom[:3],
               "integrity_ok": db.integrity_ok(), "load_before": load_before, "load_after": loadavg(),
               "finished": stamp(seconds=False)}
        demo.close()
        wb.close()
        db.close()
        return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labellers", type=int, default=4, choices=range(2, 6))
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--photos", type=int, default=3)
    parser.add_argument("--own", type=float, default=0.85, help="share of edits on the labeller's own instances")
    parser.add_argument("--postgres", default=None, help="a PostgreSQL server URL (a role that may CREATE DATABASE); "
                                                         "a new database is made there and dropped after")
    parser.add_argument("--port", type=int, default=7875)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "team" / "results.jsonl")
    args = parser.parse_args()
    if args.postgres:
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url
        from sqlalchemy.pool import NullPool

        from db.engine import normalise_url

        server = make_url(normalise_url(args.postgres))
        name = f"bench_team_{uuid.uuid4().hex[:12]}"
        admin = create_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            result = run(args, server.set(database=name).render_as_string(hide_password=False), "postgresql")
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
    else:
        result = run(args, None, "sqlite")
    result["command"] = "python benchmarks/bench_team.py " + " ".join(
        a if "postgres" not in a else "postgresql://..." for a in sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(result) + "\n")
    print(json.dumps(result, indent=1, default=str))
    return 0 if result["acknowledged_lost"] == 0 and result["phantom_conflicts"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())

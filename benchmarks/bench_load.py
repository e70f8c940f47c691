#!/usr/bin/env python
"""Load test (issue 6 "Load"): N concurrent API clients against one real server, then a check of the database.

One `python launch.py serve` subprocess on a loopback port (SQLite in its data folder, or `--db URL`,
e.g. PostgreSQL); --clients gradio_client clients in threads, each looping for --seconds:

1. `upload_images` of a photo made unique for this upload (a coco_subset val photo with a stamped
   corner; every client's first upload is the *same* photo, so concurrent uploads of one file race);
2. `propose` on its id;
3. `save_annotations` of the proposals above --keep-score, accepted, plus a box that names the client
   and the step, with the revision that `propose` returned;
4. every --hot-every-th client also saves a box on one shared "hot" image with the revision it last
   saw there: those saves conflict with each other. A conflict is the expected, reported outcome
   (counted apart, not an error); the client then saves again with the revision the message names.

Afterwards the database is checked: every acknowledged save (the revision it returned) is there with
its content, as the image's annotations (the newest save) or in the journal (older ones, which undo
restores); every reported conflict is in the journal; every uploaded photo is one image row
(no duplicates, none lost). Reported: throughput, p50/p99 latency of each operation, errors,
conflicts, the load average before and after (the CPU may be shared).

    python benchmarks/bench_load.py                                 # SQLite, 20 clients, 120 s
    python benchmarks/bench_load.py --db postgresql://USER@127.0.0.1:5433/load   # an empty PostgreSQL database
    python benchmarks/bench_load.py --clients 3 --seconds 15 --train-images 4 --base-iterations 3  # smoke test

The model and its data are bench_api_speed.py's (WORK/base_data, made once; see there). Results:
WORK/results-<backend>.json and a table on stdout.
"""
from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import sys
import threading
import time
from pathlib import Path

from bench_api_speed import Server, client_for, make_base, make_photos, others_running
from common import (DEFAULT_DATA, DEFAULT_WEIGHTS, REPO, copy_fresh, loadavg, percentile, stamp,
                    write_json)

OPS = ("upload", "propose", "save", "hot_save")
CONFLICT = re.compile(r"revision (-?\d+), now (\d+)")


def unique_photo(base: bytes, client: int, step: int) -> bytes:
    """The photo with its top-left corner stamped with (client, step): new bytes, a new image."""
    from PIL import Image

    with Image.open(io.BytesIO(base)) as image:
        image = image.convert("RGB")
        image.paste((client * 12 % 256, step % 256, step // 256 % 256), (0, 0, 8, 8))
        out = io.BytesIO()
        image.save(out, format="PNG")
        return out.getvalue()


class Recorder:
    def __init__(self):
        self.lock = threading.Lock()
        self.latency = {op: [] for op in OPS}
        self.errors: list[str] = []
        self.conflicts = 0
        self.saves: list[dict] = []  # acknowledged saves: image, revision, instances as sent back
        self.conflicted: list[dict] = []  # saves refused by a conflict: image, box
        self.uploads: dict[str, int] = {}  # photo sha256 -> image id

    def time(self, op: str, fn, *args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            with self.lock:
                self.latency[op].append(time.perf_counter() - start)


def marker_box(client: int, step: int) -> list[float]:
    """A box whose position names (client, step): unique on an image for 40 x 40 steps."""
    x, y = 1 + (client * 7 + step) % 40, 1 + (step // 40) % 40
    return [float(x), float(y), float(x + 12), float(y + 12)]


def run_client(url: str, index: int, args, photos: list[bytes], hot_id: int, rec: Recorder, deadline: float):
    import hashlib
    import tempfile

    from gradio_client import handle_file

    client = client_for(url)
    hot_revision = -1
    step = 0
    folder = Path(tempfile.mkdtemp(prefix=f"load-client{index}-"))
    while time.monotonic() < deadline:
        try:
            data = photos[0] if step == 0 else unique_photo(photos[(index + step) % len(photos)], index, step)
            path = folder / f"c{index}-s{step}.png"
            path.write_bytes(data)
            up = rec.time("upload", client.predict, [handle_file(str(path))], "train", api_name="/upload_images")
            if up["refused"] or len(up["image_ids"]) != 1:
                raise RuntimeError(f"upload refused: {up}")
            image_id = up["image_ids"][0]
            with rec.lock:
                sha = hashlib.sha256(data).hexdigest()
                if rec.uploads.setdefault(sha, image_id) != image_id:
                    rec.errors.append(f"one photo, two image ids: {rec.uploads[sha]} and {image_id}")
            if step == 0:  # the photo every client uploads at once: only the upload's race is of interest
                step += 1
                continue
            proposed = rec.time("propose", client.predict, image_id, args.score, api_name="/propose")
            keep = [dict(i, review_state="accepted") for i in proposed["instances"]
                    if i["review_state"] == "proposed" and (i["score"] or 0) >= args.keep_score]
            keep.append({"category_id": args.category, "box": marker_box(index, step)})
            saved = rec.time("save", client.predict, image_id, keep, proposed["saved_revision"],
                             api_name="/save_annotations")
            with rec.lock:
                rec.saves.append({"image_id": image_id, "revision": saved["saved_revision"],
                                  "instances": saved["instances"] if saved["revision"] == saved["saved_revision"]
                                  else None, "sent": len(keep)})
            if index % args.hot_every == 0:
                box = marker_box(index, step)
                for _ in range(3):  # a conflict: save again with the revision the message names
                    try:
                        hot = rec.time("hot_save", client.predict, hot_id, [{"category_id": args.category, "box": box}],
                                       hot_revision, api_name="/save_annotations")
                        hot_revision = hot["revision"]
                        with rec.lock:
                            rec.saves.append({"image_id": hot_id, "revision": hot["saved_revision"], "box": box})
                        break
                    except Exception as exc:  # noqa: BLE001
                        found = CONFLICT.search(str(exc))
                        if not found:
                            raise
                        hot_revision = int(found.group(2))
                        with rec.lock:
                            rec.conflicts += 1
                            rec.conflicted.append({"image_id": hot_id, "box": box})
        except Exception as exc:  # noqa: BLE001
            with rec.lock:
                rec.errors.append(f"client {index} step {step}: {type(exc).__name__}: {exc}"[:500])
        step += 1
    shutil.rmtree(folder, ignore_errors=True)


def instance_key(box, category_id) -> tuple:
    return (int(category_id), *(round(float(v), 1) for v in box))


def check_database(data_dir: Path, url: str | None, rec: Recorder, images_before: int) -> dict:
    """Every acknowledged save is in the database once; every conflict is journalled; one row per photo."""
    from sqlalchemy import func, select

    from db.engine import open_database
    from db.models import Annotation, Image, JournalEntry

    db = open_database(data_dir, url)
    problems = []
    try:
        with db.session() as session:
            revisions = dict(session.execute(select(Image.id, Image.revision)).all())
            image_count = session.scalar(select(func.count()).select_from(Image))
            current: dict[int, list] = {}
            for ann in session.scalars(select(Annotation)):
                current.setdefault(ann.image_id, []).append(
                    (ann.id, instance_key((ann.bbox_x, ann.bbox_y, ann.bbox_x + ann.bbox_w, ann.bbox_y + ann.bbox_h),
                                          ann.category_id)))
            journal = {}
            conflicts = []
            for entry in session.scalars(select(JournalEntry)):
                if entry.action == "save":
                    if (entry.image_id, entry.revision) in journal:
                        problems.append(f"two journal entries for image {entry.image_id} revision {entry.revision}")
                    journal[(entry.image_id, entry.revision)] = [
                        instance_key((r["bbox_x"], r["bbox_y"], r["bbox_x"] + r["bbox_w"], r["bbox_y"] + r["bbox_h"]),
                                     r["category_id"]) for r in entry.snapshot]
                elif entry.action == "conflict":
                    conflicts.append(entry)
        seen_revisions = {}
        for save in rec.saves:
            key = (save["image_id"], save["revision"])
            if key in seen_revisions:
                problems.append(f"two acknowledged saves made image {key[0]} revision {key[1]}")
            seen_revisions[key] = save
            if "box" in save:  # the hot image: one box per save
                expected = [instance_key(save["box"], rec_category)]
                rows = ([k for _, k in current.get(save["image_id"], [])] if revisions[save["image_id"]] == save["revision"]
                        else journal.get(key))
                if sorted(rows or []) != expected:
                    problems.append(f"hot save {key}: {rows} in the database, {expected} acknowledged")
                continue
            if revisions[save["image_id"]] != save["revision"]:
                problems.append(f"image {save['image_id']} is at revision {revisions[save['image_id']]}, the "
                                f"acknowledged save made {save['revision']} and nothing else saved it")
                continue
            rows = current.get(save["image_id"], [])
            if len(rows) != save["sent"]:
                problems.append(f"image {save['image_id']}: {len(rows)} annotations, {save['sent']} saved")
            if save["instances"] is not None:
                acknowledged = sorted((i["id"], instance_key(i["box"], i["category_id"])) for i in save["instances"])
                if sorted(rows) != acknowledged:
                    problems.append(f"image {save['image_id']}: {sorted(rows)} stored, {acknowledged} acknowledged")
        journalled = sorted(instance_key((r["bbox_x"], r["bbox_y"], r["bbox_x"] + r["bbox_w"], r["bbox_y"] + r["bbox_h"]),
                                         r["category_id"]) for e in conflicts for r in e.snapshot)
        reported = sorted(instance_key(c["box"], rec_category) for c in rec.conflicted)
        if journalled != reported:
            problems.append(f"{len(reported)} conflicts reported, {len(journalled)} journalled (or different)")
        if image_count != images_before + len(rec.uploads):
            problems.append(f"{image_count} images in the database: {images_before} before and "
                            f"{len(rec.uploads)} distinct photos uploaded")
        uploaded_ids = set(rec.uploads.values())
        if len(uploaded_ids) != len(rec.uploads):
            problems.append("two photos got one image id")
        return {"images_in_database": image_count, "distinct_photos_uploaded": len(rec.uploads),
                "acknowledged_saves": len(rec.saves), "conflicts_journalled": len(journalled),
                "integrity_ok": db.integrity_ok(), "problems": problems[:50], "problem_count": len(problems)}
    finally:
        db.close()


rec_category = 1  # set in main: the class of the marker boxes


def prepare_postgres(run_data: Path, url: str) -> None:
    """An empty PostgreSQL database gets the base model's classes and model version (the images stay out)."""
    from db import registry
    from db.engine import open_database
    from db.models import Category

    source = open_database(run_data)
    target = open_database(run_data, url)
    try:
        with source.session() as s, target.session() as t:
            if t.query(Category).count():
                raise SystemExit(f"{url} is not empty: give an empty database")
            for c in s.query(Category):
                t.add(Category(id=c.id, name=c.name, supercategory=c.supercategory))
        version = registry.active_version(source)
        registry.register_version(target, registry.checkpoint_path(source, version), name=version.name,
                                  config=version.config, metrics=version.metrics, activate=True)
    finally:
        source.close()
        target.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks" / "out" / "load")
    parser.add_argument("--db", metavar="URL", default=None, help="an empty database (default: SQLite)")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--hot-every", type=int, default=4, help="every Nth client also saves the shared image")
    parser.add_argument("--score", type=float, default=0.3, help="propose's score threshold")
    parser.add_argument("--keep-score", type=float, default=0.5, help="proposals accepted in the save")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--train-images", type=int, default=20)
    parser.add_argument("--base-iterations", type=int, default=100)
    parser.add_argument("--base-image-size", type=int, default=600)
    parser.add_argument("--force-base", action="store_true")
    parser.add_argument("--photos", type=int, default=8)
    parser.add_argument("--photo-side", type=int, default=640)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    # the model of bench_api_speed.py (its WORK/base_data), kept in this benchmark's WORK
    with open(args.work / "log.txt", "a") as log:
        base = make_base(args, log)
    photos = [p.read_bytes() for p in make_photos(args)]
    run_data = copy_fresh(args.work / "base_data", args.work / "run_data")
    backend = "sqlite"
    if args.db:
        backend = args.db.split(":", 1)[0].split("+")[0]
        prepare_postgres(run_data, args.db)
    from db import queries
    from db.engine import open_database

    db = open_database(run_data, args.db)
    names = queries.category_names(db)
    images_before = queries.summary(db).images + 1  # and the hot image
    global rec_category
    rec_category = args.category = next(iter(names))
    db.close()

    server = Server(run_data, args.work / f"server-{backend}.log", extra_args=["--db", args.db] if args.db else [])
    try:
        print(f"server up in {server.wait():.1f} s", flush=True)
        setup = client_for(server.url)
        hot_path = args.work / "hot.png"
        hot_path.write_bytes(unique_photo(photos[-1], 255, 65535))
        from gradio_client import handle_file

        hot_id = setup.predict([handle_file(str(hot_path))], "val", api_name="/upload_images")["image_ids"][0]
        rec = Recorder()
        load_before, others_before = loadavg(), others_running(args.work)
        print(f"{stamp()}: {args.clients} clients for {args.seconds:.0f} s ({backend}); load {load_before}",
              flush=True)
        started = time.monotonic()
        deadline = started + args.seconds
        threads = [threading.Thread(target=run_client, args=(server.url, i, args, photos, hot_id, rec, deadline),
                                    daemon=True) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=args.seconds + 600)
        elapsed = time.monotonic() - started
        load_after, others_after = loadavg(), others_running(args.work)
    finally:
        server.stop()
    check = check_database(run_data, args.db, rec, images_before)
    total = sum(len(v) for v in rec.latency.values())
    results = {
        "date": stamp(), "backend": backend, "clients": args.clients, "seconds": round(elapsed, 1),
        "hot_every": args.hot_every, "photo_side": args.photo_side, "model": base.get("version_name"),
        "load_before": load_before, "load_after": load_after, "others_before": others_before,
        "others_after": others_after, "operations": total, "ops_per_s": round(total / elapsed, 2),
        "errors": len(rec.errors), "error_samples": rec.errors[:10], "conflicts": rec.conflicts,
        "per_op": {op: {"n": len(v), "per_s": round(len(v) / elapsed, 2),
                        "p50_ms": None if not v else round(percentile(v, 50) * 1000),
                        "p99_ms": None if not v else round(percentile(v, 99) * 1000)}
                   for op, v in rec.latency.items()},
        "check": check}
    write_json(args.work / f"results-{backend}.json", results)
    print(json.dumps({k: v for k, v in results.items() if k != "per_op"}, indent=1))
    print("\n| operation | n | ops/s | p50 | p99 |\n|---|---|---|---|---|")
    for op, row in results["per_op"].items():
        print(f"| {op} | {row['n']} | {row['per_s']} | {row['p50_ms']} ms | {row['p99_ms']} ms |")
    ok = not rec.errors and check["problem_count"] == 0 and check["integrity_ok"]
    print("OK: 0 errors, every acknowledged save there once" if ok else "FAILED: see errors / check above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

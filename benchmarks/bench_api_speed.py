#!/usr/bin/env python
"""API speed of the workbench (issue 5 "Speed"), measured through the real headless API.

A real `python launch.py serve --port P --data-dir D` subprocess is called with `gradio_client`,
as a script or the browser would call it:

1. upload -> proposals: `upload_images` of one 1024 px photo, then `propose` on its id (the UI
   proposes on upload: `on_upload` -> `UI.open` -> `Workbench.propose`). Goal <= 2 s.
2. annotation saves: `save_annotations` round trips (accept a proposal, change a class, add a
   painted polygon mask, add a box-only annotation, reject a proposal), each sending back the
   image's instances with the revision it saw. Goal <= 200 ms each.
3. while a retrain runs (`retrain` mode heads through `client.submit`): a light call (`overview`)
   and a heavy one (`propose`, on images whose predictions are not cached) each every second,
   in their own threads. Goal: the UI answers within 1 s.
4. (no server) the same photos in-process: the predictor alone, storing the proposals, reading
   them back: where the time of `propose` goes, and the API's own overhead.

    python benchmarks/bench_api_speed.py --retrain-iterations 30   # the measurement (~4 minutes on 2 cores)
    python benchmarks/bench_api_speed.py --work benchmarks/out/api_speed_smoke --train-images 4 \\
        --base-iterations 3 --photos 2 --saves 5 --retrain-iterations 3 --retrain-image-size 128   # smoke test

The model: WORK/base_data is made once (kept between runs; --force-base remakes it): the first
--train-images coco_subset train images (`launch.py import-coco` of a subset file) and `launch.py
train --mode heads --iterations 100 --image-size 600 --backbone-weights mobilenet_v2-b0353104.pth
--device cpu` (default backbone mobilenet_v2, Mask^X transfer head). Each run copies it to
WORK/run_data, so that every run starts from the same database and model. The photos are
coco_subset val images (not in the training set) resized so that the long side is 1024 px.
Results: WORK/results.json (every sample) and a table on stdout; the load average
(os.getloadavg()) is recorded before and after each phase.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from common import (DEFAULT_DATA, DEFAULT_WEIGHTS, REPO, coco_subset_file, copy_fresh, loadavg, run_launch, stamp,
                    weights_for_server, write_json)

ENV = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))


def others_running(work: Path) -> list[str]:
    """Other CPU-heavy jobs that share the machine: benchmarks, trainings, test suites (not this one's)."""
    out = subprocess.run(["pgrep", "-af", r"benchmarks/bench_|launch.py train|pytest"], capture_output=True,
                         text=True).stdout
    mine = {str(os.getpid()), str(os.getppid())}
    return [line[:200] for line in out.splitlines()
            if "pgrep" not in line and "bench_api_speed" not in line and str(work) not in line
            and line.split(" ", 1)[0] not in mine
            and not line.split(" ", 2)[1:2] == ["sh"]]


def stats(values: list[float]) -> dict:
    """median / p90 / p95 / max (linear interpolation between order statistics) in seconds."""
    if not values:
        return {"n": 0}
    import numpy as np

    a = np.asarray(values, float)
    return {"n": len(values), "median": float(np.median(a)), "p90": float(np.percentile(a, 90)),
            "p95": float(np.percentile(a, 95)), "max": float(a.max()), "min": float(a.min()),
            "mean": float(a.mean())}


# ---- the data dir with a model (made once) -------------------------------------------------------
def make_base(args, log) -> dict:
    base = args.work / "base_data"
    marker = args.work / "base.json"
    if marker.exists() and base.is_dir() and not args.force_base:
        return json.loads(marker.read_text())
    if base.exists():
        shutil.rmtree(base)
    subset = coco_subset_file(args.data / "train.json", args.train_images,
                              args.work / f"train_first{args.train_images}.json")
    import_s = run_launch(["import-coco", str(subset), "--images", str(args.data / "images"), "--data-dir", str(base)],
                          log, env=ENV)
    load_before = loadavg()
    train_s = run_launch(["train", "--mode", "heads", "--iterations", str(args.base_iterations), "--image-size",
                          str(args.base_image_size), "--backbone-weights", str(args.weights), "--device", "cpu",
                          "--data-dir", str(base)], log, env=ENV)
    from db import registry
    from db.engine import open_database

    db = open_database(base)
    version = registry.active_version(db)
    info = {"made": stamp(), "train_images": args.train_images, "iterations": args.base_iterations,
            "image_size": args.base_image_size, "mode": "heads", "backbone": "mobilenet_v2",
            "mask_head": "transfer", "backbone_weights": str(args.weights), "import_seconds": import_s,
            "train_command_seconds": train_s, "load_before_train": load_before, "version_id": version.id,
            "version_name": version.name, "checkpoint": version.checkpoint_path, "metrics": version.metrics}
    db.close()
    write_json(marker, info)
    return info


def make_photos(args) -> list[Path]:
    """coco_subset val photos (sorted by id) resized to a long side of --photo-side px (PIL, JPEG q90)."""
    from PIL import Image

    folder = args.work / f"photos{args.photo_side}"
    folder.mkdir(parents=True, exist_ok=True)
    val = json.loads((args.data / "val.json").read_text())
    wanted = 1 + args.photos + 1  # warm-up, measured, in-process upload check
    paths = []
    for im in sorted(val["images"], key=lambda i: i["id"])[:wanted]:
        out = folder / f"{Path(im['file_name']).stem}_{args.photo_side}.jpg"
        if not out.exists():
            with Image.open(args.data / "images" / im["file_name"]) as src:
                src = src.convert("RGB")
                scale = args.photo_side / max(src.size)
                size = (round(src.width * scale), round(src.height * scale))
                src.resize(size, Image.LANCZOS).save(out, quality=90)
        paths.append(out)
    if len(paths) < wanted:
        raise SystemExit(f"val.json has only {len(paths)} images, {wanted} are needed")
    return paths


# ---- the server ------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, data_dir: Path, log_path: Path, extra_args=()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = open(log_path, "w")
        self.started = time.perf_counter()
        self.process = subprocess.Popen([sys.executable, str(REPO / "launch.py"), "serve", "--port", str(self.port),
                                         "--data-dir", str(data_dir), *extra_args], cwd=REPO, env=ENV, stdout=self.log,
                                        stderr=subprocess.STDOUT)

    def wait(self, seconds: float = 180) -> float:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited ({self.process.returncode}); see {self.log.name}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as response:
                    if response.status == 200:
                        return time.perf_counter() - self.started
            except OSError:
                time.sleep(0.25)
        raise SystemExit(f"{self.url} did not answer in {seconds} s")

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def client_for(url: str):
    from gradio_client import Client

    return Client(url, verbose=False)


def timed(fn, *a, **kw):
    t = time.perf_counter()
    out = fn(*a, **kw)
    return time.perf_counter() - t, out


# ---- phase 1: upload -> proposals -------------------------------------------------------------------
def upload_and_propose(client, photo: Path, threshold: float) -> dict:
    from gradio_client import handle_file

    t0 = time.perf_counter()
    up = client.predict([handle_file(str(photo))], "train", api_name="/upload_images")
    t1 = time.perf_counter()
    if up["added"] != 1:
        raise SystemExit(f"{photo.name} was not added as a new image: {up}")
    image_id = up["image_ids"][0]
    proposals = client.predict(image_id, threshold, api_name="/propose")
    t2 = time.perf_counter()
    return {"photo": photo.name, "image_id": image_id, "upload_s": t1 - t0, "propose_s": t2 - t1, "total_s": t2 - t0,
            "instances": len(proposals["instances"]), "added": proposals["added"],
            "revision": proposals["revision"], "model_version_id": proposals["model_version_id"],
            "response_bytes": len(json.dumps(proposals)), "response": proposals}


# ---- phase 2: saves -----------------------------------------------------------------------------------
def polygon_in(box) -> list[list[float]]:
    x1, y1, x2, y2 = box
    cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, max(2.0, (x2 - x1) / 3), max(2.0, (y2 - y1) / 3)
    return [[cx - rx, cy, cx, cy - ry, cx + rx, cy, cx, cy + ry]]  # a diamond


def measure_saves(client, image_id: int, current: dict, n: int, width: int, height: int,
                  category_ids: list[int]) -> list[dict]:
    """n save_annotations round trips on one image, cycling through the kinds of edits a person makes;
    each sends back all the image's instances (masks as the RLE the API gave) and the revision it saw."""
    instances, revision = current["instances"], current["revision"]  # the image as the page has it
    cycle = ["accept a proposal", "change a class", "add a painted polygon mask", "add a box-only annotation",
             "reject a proposal"]
    samples = []
    for k in range(n):
        kind = cycle[k % len(cycle)]
        send = [dict(i) for i in instances]
        proposed = [i for i in send if i["review_state"] == "proposed"]
        accepted = [i for i in send if i["review_state"] == "accepted" and i["category_id"] in category_ids]
        if kind == "accept a proposal" and not proposed:
            kind = "change a class"
        if kind == "reject a proposal" and not proposed:
            kind = "delete an annotation" if len(send) > 1 else "add a painted polygon mask"
        if kind == "change a class" and not accepted:
            kind = "add a painted polygon mask"
        if kind == "accept a proposal":
            proposed[0]["review_state"] = "accepted"
        elif kind == "reject a proposal":
            proposed[-1]["review_state"] = "rejected"
        elif kind == "delete an annotation":
            send.pop()
        elif kind == "change a class":
            target = accepted[k % len(accepted)]
            others = [c for c in category_ids if c != target["category_id"]]
            target["category_id"] = others[k % len(others)]
            target.pop("category", None)
        else:
            x = 20 + (k * 37) % max(1, width - 160)
            y = 20 + (k * 53) % max(1, height - 120)
            box = [x, y, x + 120, y + 90]
            category = category_ids[k % len(category_ids)]
            if kind == "add a box-only annotation":
                send.append({"category_id": category, "box": box})
            else:
                send.append({"category_id": category, "mask": polygon_in(box)})
        seconds, out = timed(client.predict, image_id, send, revision, api_name="/save_annotations")
        if out["revision"] != revision + 1:
            raise SystemExit(f"save {k}: revision {revision} -> {out['revision']}")
        instances, revision = out["instances"], out["revision"]
        samples.append({"kind": kind, "seconds": seconds, "instances_sent": len(send),
                        "request_bytes": len(json.dumps(send)), "revision": revision})
    return samples


def save_series(client, db, image_id: int, current: dict, n: int, what: str) -> dict:
    from db import queries

    info = queries.image_info(db, image_id)
    category_ids = sorted(queries.category_names(db))
    load_before = loadavg()
    samples = measure_saves(client, image_id, current, n, info["width"], info["height"], category_ids)
    out = {"image": what, "image_id": image_id, "width": info["width"], "height": info["height"],
           "instances_at_start": len(current["instances"]), "samples": samples, "load_before": load_before,
           "load_after": loadavg(), "summary": stats([s["seconds"] for s in samples]),
           "by_kind": {k: stats([s["seconds"] for s in samples if s["kind"] == k])
                       for k in dict.fromkeys(s["kind"] for s in samples)}}
    print(f"saves on {what} ({len(current['instances'])} instances): median {out['summary']['median'] * 1000:.0f} ms, "
          f"max {out['summary']['max'] * 1000:.0f} ms", flush=True)
    return out


# ---- phase 3: the UI while a retrain runs ----------------------------------------------------------------
def poll_loop(url: str, name: str, call, stop: threading.Event, t_origin: float, out: list, period: float = 1.0):
    """Call `call(client, k)` every `period` seconds (start to start; back to back when a call takes longer)."""
    client = client_for(url)
    k = 0
    next_start = time.perf_counter()
    while not stop.is_set():
        now = time.perf_counter()
        if now < next_start:
            stop.wait(next_start - now)
            continue
        start = time.perf_counter()
        error = None
        try:
            extra = call(client, k) or {}
        except Exception as exc:  # noqa: BLE001 (recorded: an error is an answer too, but a wrong one)
            extra, error = {}, f"{type(exc).__name__}: {exc}"
        end = time.perf_counter()
        out.append({"call": name, "start": start - t_origin, "seconds": end - start, "error": error, **extra})
        k += 1
        next_start = start + period


def during_retrain(url: str, args, image_ids: list[int], base_version: int, backbone_weights: str) -> dict:
    client = client_for(url)
    idle_overview = []
    for _ in range(5):
        seconds, _ = timed(client.predict, api_name="/overview")
        idle_overview.append(seconds)
        time.sleep(0.2)

    def overview(c, k):
        text, _, images = c.predict(api_name="/overview")
        return {"images": len(images["data"])}

    def propose(c, k):
        image_id = image_ids[k % len(image_ids)]  # cycling through more images than ModelCache keeps (4)
        result = c.predict(image_id, 0.05, api_name="/propose")
        return {"image_id": image_id, "instances": len(result["instances"]),
                "model_version_id": result["model_version_id"]}

    samples: list[dict] = []
    progress: list[dict] = []
    stop = threading.Event()
    load_before = loadavg()
    t_origin = time.perf_counter()
    job = client.submit("heads", args.retrain_iterations, args.retrain_image_size,
                        backbone_weights,
                        api_name="/retrain")
    time.sleep(0.5)  # the retrain's request first: it starts the training process
    threads = [threading.Thread(target=poll_loop, args=(url, name, fn, stop, t_origin, samples), daemon=True)
               for name, fn in (("overview", overview), ("propose", propose))]
    for t in threads:
        t.start()
    loads = []
    while not job.done():
        status = job.status()
        p = status.progress_data
        progress.append({"t": time.perf_counter() - t_origin, "index": p[0].index if p else None,
                         "length": p[0].length if p else None, "desc": p[0].desc if p else None})
        if not loads or time.perf_counter() - t_origin - loads[-1][0] >= 10:
            loads.append((time.perf_counter() - t_origin, loadavg()))
        time.sleep(0.5)
    retrain_end = time.perf_counter() - t_origin
    stop.set()
    for t in threads:
        t.join(timeout=120)
    result = job.result(timeout=60)
    # calls that started while the retrain ran; calls answered by the retrained model (it is activated a
    # moment before the retrain call returns, and the first such call loads it) are flagged
    during = [s for s in samples if s["start"] < retrain_end]
    summary = {}
    for name in ("overview", "propose"):
        calls = [s for s in during if s["call"] == name]
        ok = [s["seconds"] for s in calls if s["error"] is None]
        summary[name] = {**stats(ok), "errors": sum(s["error"] is not None for s in calls),
                         "over_1s": sum(s["seconds"] > 1.0 for s in calls)}
        old_model = [s["seconds"] for s in calls if s["error"] is None and s.get("model_version_id", base_version)
                     == base_version]
        if name == "propose":
            summary[name]["with_the_base_model"] = stats(old_model)
    return {"retrain_seconds": retrain_end, "retrain_result": {k: v for k, v in result.items() if k != "history"},
            "load_before": load_before, "load_after": loadavg(), "loads": loads,
            "idle_overview": stats(idle_overview), "summary": summary, "samples": samples, "progress": progress}


# ---- phase 4: in-process breakdown ---------------------------------------------------------------------
def breakdown(run_data: Path, base: dict, image_ids: list[int], upload_photo: Path, save_ids: list[int]) -> dict:
    """The same photos without the server: predictor alone, storing the proposals, reading them back,
    and add_images alone; the API's overhead is what the API's figures have beyond these."""
    import torch
    from PIL import Image

    from app.display import predict_scaled
    from services.workbench import Workbench
    from db import queries
    from db.engine import open_database
    from db.imagestore import ImageStore, load_rgb
    from db.uploads import add_images
    from services.models import load_predictor
    from services.proposals import propose

    db = open_database(run_data)
    wb = Workbench(db)
    predictor = load_predictor(db, run_data / base["checkpoint"])
    store = ImageStore(db.data_dir)
    # the threshold the app's ModelCache predicts with: 0.0 until 17:58 UTC 2026-11-21 (everything, filtered
    # afterwards), since then the proposal minimum (the model skips final masks below it)
    app_threshold = float(getattr(wb.models, "threshold", getattr(wb.models, "PREDICT_THRESHOLD", 0.0)))
    rows = []
    for n, image_id in enumerate([image_ids[0]] + list(image_ids)):  # the first one twice: warm-up
        info = queries.image_info(db, image_id)
        decode_s, rgb = timed(load_rgb, store.absolute(info["stored_path"]))
        model_s, preds = timed(predict_scaled, predictor, rgb, app_threshold)
        store_s, result = timed(propose, db, image_id, None, base["version_id"], score_threshold=wb.score_threshold,
                                instances=preds)
        read_s, out = timed(wb.instances, image_id)
        json_s, text = timed(json.dumps, out)
        model_0_s, all_preds = timed(predict_scaled, predictor, rgb, 0.0)  # every candidate (up to 100)
        if n > 0:
            rows.append({"image_id": image_id, "decode_s": decode_s, "model_s": model_s, "store_s": store_s,
                         "read_s": read_s, "json_s": json_s, "instances": result.added, "json_bytes": len(text),
                         "predicted": len(preds), "model_at_0_s": model_0_s, "predicted_at_0": len(all_preds)})
    # the saves' images, in-process (save_json + instances: what api_save does), 5 times each
    saves = []
    for image_id in save_ids:
        out = wb.instances(image_id)
        for k in range(5):
            send = [dict(i) for i in out["instances"]]
            seconds, revision = timed(wb.editor.save_json, image_id, send, out["revision"])
            read_s, out = timed(wb.instances, image_id)
            saves.append({"image_id": image_id, "save_json_s": seconds, "instances_s": read_s,
                          "instances": len(send)})
    # add_images alone on a copy of a photo with other bytes (a new image)
    copy = upload_photo.with_name(upload_photo.stem + f"_copy{int(time.time())}.jpg")
    with Image.open(upload_photo) as im:
        im.save(copy, quality=89, comment=f"bench_api_speed {time.time()}".encode())  # new bytes, new hash
    upload_s, up = timed(add_images, db, [str(copy)])
    copy.unlink()
    db.close()
    keys = ["decode_s", "model_s", "store_s", "read_s", "json_s"]
    return {"torch_threads": torch.get_num_threads(), "app_threshold": app_threshold, "propose_rows": rows,
            "propose_median": {k: statistics.median(r[k] for r in rows) for k in keys},
            "model_at_0_median": statistics.median(r["model_at_0_s"] for r in rows),
            "saves": saves, "save_median": {str(i): {k: statistics.median(s[k] for s in saves if s["image_id"] == i)
                                                     for k in ("save_json_s", "instances_s", "instances")}
                                            for i in save_ids},
            "add_images_s": upload_s, "add_images_added": up.added}


# ---- report ------------------------------------------------------------------------------------------
def ms(v) -> str:
    return "-" if v is None else f"{v * 1000:,.0f}"


def table(results: dict) -> str:
    p1, saves, p3 = results["upload_propose"], results["saves"], results["retrain"]
    lines = ["| measured through the API | n | median ms | p90 ms | p95 ms | max ms | goal | met |",
             "|---|---:|---:|---:|---:|---:|---|---|"]

    def row(label, s, goal, key):
        met = "-" if goal is None else ("yes" if s.get(key, 0) <= goal else "**no**")
        goal_text = "-" if goal is None else f"{key} <= {goal * 1000:,.0f} ms"
        lines.append(f"| {label} | {s['n']} | {ms(s.get('median'))} | {ms(s.get('p90'))} | {ms(s.get('p95'))} | "
                     f"{ms(s.get('max'))} | {goal_text} | {met} |")

    row("upload -> proposals back (1024 px photo)", p1["total"], 2.0, "max")
    row("&nbsp;&nbsp;of which `upload_images`", p1["upload"], None, "max")
    row("&nbsp;&nbsp;of which `propose`", p1["propose"], None, "max")
    row(f"`save_annotations` round trip, 1024 px photo ({saves['instances_at_start']} instances at start)",
        saves["summary"], 0.2, "max")
    imp = results["saves_imported"]
    row(f"`save_annotations` round trip, {imp['width']}x{imp['height']} photo "
        f"({imp['instances_at_start']} imported instances at start)", imp["summary"], 0.2, "max")
    row("`overview` while a retrain runs", p3["summary"]["overview"], 1.0, "max")
    row("`propose` while a retrain runs", p3["summary"]["propose"], 1.0, "max")
    row("`overview`, no retrain (before it)", p3["idle_overview"], None, "max")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks" / "out" / "api_speed")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--train-images", type=int, default=20, help="coco_subset train images of the model")
    parser.add_argument("--base-iterations", type=int, default=100)
    parser.add_argument("--base-image-size", type=int, default=600)
    parser.add_argument("--force-base", action="store_true", help="remake WORK/base_data")
    parser.add_argument("--photos", type=int, default=10)
    parser.add_argument("--photo-side", type=int, default=1024)
    parser.add_argument("--saves", type=int, default=20)
    parser.add_argument("--retrain-iterations", type=int, default=30, help="~2 min beside the proposes")
    parser.add_argument("--retrain-image-size", type=int, default=600)
    parser.add_argument("--skip-breakdown", action="store_true")
    args = parser.parse_args()
    for path in (args.data / "train.json", args.data / "val.json", args.weights):
        if not path.exists():
            raise SystemExit(f"{path} is missing")
    args.work.mkdir(parents=True, exist_ok=True)
    log = open(args.work / "log.txt", "a")
    log.write(f"==== {stamp()} {' '.join(sys.argv)}\n")

    results: dict = {"started": stamp(), "argv": sys.argv[1:], "cpu_count": os.cpu_count(),
                     "load_start": loadavg(), "others_running_at_start": others_running(args.work.resolve())}
    base = make_base(args, log)
    results["model"] = base
    photos = make_photos(args)
    run_data = copy_fresh(args.work / "base_data", args.work / "run_data")
    backbone_weights = weights_for_server(args.weights, run_data)

    server = Server(run_data, args.work / "server.log")
    try:
        results["server_start_s"] = server.wait()
        client = client_for(server.url)
        # warm-up: the first call after start (the model loads in the background while the page opens)
        results["first_upload_propose"] = upload_and_propose(client, photos[0], 0.05)
        del results["first_upload_propose"]["response"]
        print(f"first upload -> proposals after start: {results['first_upload_propose']['total_s']:.2f} s", flush=True)

        # 1. upload -> proposals
        results["load_before_upload"] = loadavg()
        rows = []
        for photo in photos[1:1 + args.photos]:
            rows.append(upload_and_propose(client, photo, 0.05))
            r = rows[-1]
            print(f"  {r['photo']}: upload {r['upload_s']:.3f} s + propose {r['propose_s']:.3f} s = "
                  f"{r['total_s']:.3f} s ({r['instances']} instances)", flush=True)
        results["upload_propose"] = {"rows": rows, "load_after": loadavg(),
                                     **{k: stats([r[f"{k}_s"] for r in rows]) for k in ("upload", "propose", "total")}}
        image_ids = [r["image_id"] for r in rows]
        responses = [r.pop("response") for r in rows]

        # 2. saves: on the uploaded photo with the most proposals, and on the imported photo with the most
        # annotations (its instances as the page shows them, read from the database)
        from services.workbench import Workbench
        from db import queries
        from db.engine import open_database

        db = open_database(run_data)
        best = max(range(len(rows)), key=lambda i: (len(responses[i]["instances"]), -i))
        imported = max((r for r in queries.list_images(db, limit=None) if r["id"] not in image_ids
                        and r["id"] != results["first_upload_propose"]["image_id"]),
                       key=lambda r: (r["annotations"], -r["id"]))
        results["saves"] = save_series(client, db, rows[best]["image_id"], responses[best], args.saves,
                                       f"uploaded photo {rows[best]['photo']}")
        results["saves_imported"] = save_series(client, db, imported["id"], Workbench(db).instances(imported["id"]),
                                                args.saves, f"imported photo {imported['file_name']}")
        db.close()

        # 3. the UI while a retrain runs
        print(f"retrain (heads, {args.retrain_iterations} iterations at {args.retrain_image_size} px) with "
              "overview + propose every second ...", flush=True)
        results["retrain"] = during_retrain(server.url, args, image_ids, base["version_id"], backbone_weights)
        r = results["retrain"]
        print(f"  retrain took {r['retrain_seconds']:.1f} s; overview max {r['summary']['overview'].get('max', 0):.3f} s, "
              f"propose max {r['summary']['propose'].get('max', 0):.3f} s", flush=True)
    finally:
        server.stop()

    # 4. in-process breakdown (no server running)
    if not args.skip_breakdown:
        results["load_before_breakdown"] = loadavg()
        results["in_process"] = breakdown(run_data, base, image_ids, photos[1 + args.photos],
                                          [results["saves"]["image_id"], results["saves_imported"]["image_id"]])
        results["load_after_breakdown"] = loadavg()

    results["finished"] = stamp()
    results["load_end"] = loadavg()
    results["others_running_at_end"] = others_running(args.work.resolve())
    write_json(args.work / "results.json", results)

    print()
    print(f"model: v{base['version_id']} {base['version_name']} (heads, {base['iterations']} iterations at "
          f"{base['image_size']} px on {base['train_images']} coco_subset train images, mobilenet_v2)")
    print(f"load average (1/5/15 min): start {results['load_start']}, before upload {results['load_before_upload']}, "
          f"before retrain {results['retrain']['load_before']}, end {results['load_end']}")
    if results["others_running_at_start"] or results["others_running_at_end"]:
        print("other jobs at the start:", *results["others_running_at_start"], sep="\n  ")
        print("other jobs at the end:", *results["others_running_at_end"], sep="\n  ")
    print()
    print(table(results))
    u = results["upload_propose"]
    print(f"\nproposals per photo: median {statistics.median(r['instances'] for r in u['rows'])}; "
          f"first call after start {results['first_upload_propose']['total_s']:.2f} s; "
          f"retrain {results['retrain']['retrain_seconds']:.0f} s")
    if "in_process" in results:
        m = results["in_process"]["propose_median"]
        api = u["propose"]["median"]
        inner = sum(m.values())
        print("propose in-process (medians, ms): " + ", ".join(f"{k[:-2]} {v * 1000:.0f}" for k, v in m.items())
              + f"; sum {inner * 1000:.0f} vs the API's {api * 1000:.0f}: API overhead ~{(api - inner) * 1000:.0f} ms")
        print(f"(model: the predictor at the app's threshold {results['in_process']['app_threshold']}; at 0.0, "
              f"every candidate: {results['in_process']['model_at_0_median'] * 1000:.0f} ms)")
        for image_id, s in results["in_process"]["save_median"].items():
            print(f"save in-process, image {image_id} ({s['instances']:.0f} instances; medians, ms): save_json "
                  f"{s['save_json_s'] * 1000:.0f}, instances {s['instances_s'] * 1000:.0f}")
        print(f"add_images alone: {results['in_process']['add_images_s'] * 1000:.0f} ms")
    print(f"\nresults: {args.work / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

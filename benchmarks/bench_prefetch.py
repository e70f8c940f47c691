#!/usr/bin/env python
"""Next photo ready (issue 24): the time to open a photo the active model has not seen, with the model run in the
request (cold) and after the background prefetch proposed on it while the person was on the previous photo.

The data folder must hold an active model version; it is copied first (the original stays as it was), and
photos the model has not seen are uploaded from --photos.

    OMP_NUM_THREADS=1 python benchmarks/bench_prefetch.py --data-dir benchmarks/out/labelling24/person_car/data_loop
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import DEFAULT_DATA, cpu_name, loadavg_text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="a workbench data folder with a trained model")
    parser.add_argument("--photos", type=Path, default=DEFAULT_DATA / "images")
    parser.add_argument("--count", type=int, default=4, help="photos opened each way")
    args = parser.parse_args(argv)
    from db.engine import open_database
    from services.workbench import Workbench

    work = Path(tempfile.mkdtemp()) / "data"
    shutil.copytree(args.data_dir, work)
    db = open_database(work)
    wb = Workbench(db, device="cpu")
    wb.prefetcher.ahead_count = 1
    wb.upload([str(p) for p in sorted(args.photos.glob("*.jpg"))[-(4 * args.count):]])
    ids = [r["id"] for r in wb.list_images("all", limit=None) if wb.should_propose(r["id"], wait=False)]
    if len(ids) < 2 * args.count + 1:
        raise SystemExit(f"only {len(ids)} photos the model has not seen; give more --photos")

    def open_photo(image_id: int) -> float:  # what the page does on open: propose if needed, read the instances
        started = time.perf_counter()
        if wb.should_propose(image_id):
            wb.propose(image_id)
        wb.instances(image_id)
        return time.perf_counter() - started

    open_photo(ids[0])  # loads the model
    cold = [open_photo(i) for i in ids[1:1 + args.count]]
    ready = []
    for image_id in ids[1 + args.count:1 + 2 * args.count]:
        wb.prefetch([image_id])
        while wb.should_propose(image_id, wait=False):  # the person is still on the previous photo
            time.sleep(0.2)
        ready.append(open_photo(image_id))
    wb.close()
    print(f"CPU: {cpu_name()}; load {loadavg_text()}")
    print("cold opens (s):", [round(v, 2) for v in cold])
    print("prefetched opens (s):", [round(v, 2) for v in ready], f"(background runs: {wb.prefetcher.runs})")
    shutil.rmtree(work.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

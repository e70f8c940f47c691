"""Helpers the benchmark scripts share: one copy each, so that every script stamps, records and reads alike.

The scripts run as `python benchmarks/NAME.py` (from any folder), so this folder is on sys.path (as the
script's folder) both for the script and for the benchmark scripts it imports: `from common import ...`
needs nothing more; the project's packages come from the installed project (`pip install -r
requirements.txt`). Heavy libraries (numpy, PIL, pycocotools) are imported inside the helpers that use them,
so importing this module costs nothing.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"  # data and weights live beside the checkout, never in it
DEFAULT_DATA = SHARED / "data" / "coco_subset"
DEFAULT_WEIGHTS = SHARED / "weights" / "mobilenet_v2-b0353104.pth"


# ---- inputs ------------------------------------------------------------------------------------------
def require(path: Path, what: str) -> Path:
    """Exit with a clear message when a shared input is absent (data and weights are never in the repo)."""
    path = Path(path)
    if not path.exists():
        raise SystemExit(f"error: {what} not found at {path}; pass its path explicitly (see --help)")
    return path


def benchmark_device(name: str, threads: int, data: Path, weights: Path, what: str):
    """The torch device a model benchmark runs on, its inputs checked (``data``/val.json, ``weights``) and the
    CPU's thread count set; None (with a line saying so) for CUDA on a machine without it."""
    import torch

    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"CUDA is not available on this machine: skipping {what}.")
        return None
    require(Path(data) / "val.json", "coco_subset val.json")
    require(weights, "MobileNetV2 ImageNet weights")
    if device.type == "cpu":
        torch.set_num_threads(threads)
    return device


def read_rgb(path: Path, exif_transpose: bool = True):
    """An image file as a writable (H, W, 3) uint8 RGB array, turned upright by its EXIF orientation unless
    exif_transpose=False (the pixels as stored)."""
    import numpy as np
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        if exif_transpose:
            image = ImageOps.exif_transpose(image)
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def load_coco(path: Path):
    """A COCO annotation file as a pycocotools COCO object, without pycocotools' prints."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def index_quietly(coco):
    """coco.createIndex() (after its dataset was changed) without pycocotools' prints; returns coco."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def usable_anns(coco, image_id: int) -> list[dict]:
    """The image's annotations that are objects: not crowd regions, and with a box of positive size."""
    return [a for a in coco.imgToAnns[image_id] if not a.get("iscrowd") and a["bbox"][2] > 0 and a["bbox"][3] > 0]


def coco_subset_file(source: Path, n: int | None, out: Path, categories: list[str] | None = None) -> Path:
    """Write the first n images of a COCO file (by id; None: all) with all their annotations and every category.

    With `categories` (names), a project of those classes only: their categories, their annotations, and
    only the images that show at least one of them (the first n of those).
    """
    data = json.loads(Path(source).read_text())
    annotations, cats = data["annotations"], data["categories"]
    if categories:
        unknown = set(categories) - {c["name"] for c in cats}
        if unknown:
            raise SystemExit(f"--categories: {sorted(unknown)} not in {source}")
        cats = [c for c in cats if c["name"] in categories]
        cat_ids = {c["id"] for c in cats}
        annotations = [a for a in annotations if a["category_id"] in cat_ids]
    ids = sorted({a["image_id"] for a in annotations} if categories else {im["id"] for im in data["images"]})
    keep = set(ids if n is None else ids[:n])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**data, "categories": cats, "images": [im for im in data["images"] if im["id"] in keep],
                               "annotations": [a for a in annotations if a["image_id"] in keep]}))
    return out


def copy_fresh(source: Path, target: Path) -> Path:
    """Replace `target` by a copy of the folder `source` (a run starts from the same data every time)."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    return target


def weights_for_server(weights, data_dir: Path) -> str:
    """What a benchmark sends as /retrain's backbone_weights: "none" / empty as they are; a .pth file is copied into
    the data folder's weights/ folder (the server takes weights from there only) and named by its file name."""
    text = "" if weights is None else str(weights)
    if text.strip().lower() in ("", "none"):
        return text
    folder = Path(data_dir) / "weights"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(text, folder / Path(text).name)
    return Path(text).name


# ---- the machine and the clock -----------------------------------------------------------------------
def stamp(seconds: bool = True, when: float | None = None) -> str:
    """A UTC time as text, "2024-05-01 12:34:56 UTC" (seconds=False: "2024-05-01 12:34 UTC"); now, or the
    POSIX time `when` (e.g. a file's mtime)."""
    moment = datetime.now(timezone.utc) if when is None else datetime.fromtimestamp(when, timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d %H:%M UTC")


def loadavg() -> list[float]:
    """The 1/5/15-minute load average, rounded to 2 decimals (JSON records)."""
    return [round(v, 2) for v in os.getloadavg()]


def loadavg_text() -> str:
    """The 1/5/15-minute load average as text, "0.52 1.03 1.20" (printed lines and tables)."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


ISA_CAPS = ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY")


def cpu_name() -> str:
    """The CPU's model name, family, core count and whether it has AVX-512, plus any instruction-set cap in force,
    e.g. "AMD EPYC, family 25 (2 cores, AVX-512; held to ONEDNN_MAX_CPU_ISA=AVX2)" (Linux; the count alone elsewhere).
    CPU figures differ between kinds of CPU (benchmarks/README.md), so each says which it comes from."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "cpu family", "flags") and key not in fields:
                    fields[key] = value.strip()
                if len(fields) == 3:
                    break
    except OSError:
        pass
    if "model name" not in fields:
        return f"{os.cpu_count()} cores"
    family = f", family {fields['cpu family']}" if "cpu family" in fields else ""
    avx512 = "AVX-512" if "avx512f" in fields.get("flags", "").split() else "no AVX-512"
    caps = [f"{name}={os.environ[name]}" for name in ISA_CAPS if os.environ.get(name)]
    held = f"; held to {' '.join(caps)}" if caps else ""
    return f"{fields['model name']}{family} ({os.cpu_count()} cores, {avx512}{held})"


def proc_status_mb(field: str, pid: int | str = "self") -> float:
    """A memory field of /proc/PID/status (VmRSS, VmHWM = peak RSS) in MB (Linux). Where it cannot be read:
    for this process ("self") getrusage's max RSS, for another process 0.0 (it has exited)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    if pid != "self":
        return 0.0
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (numpy's linear interpolation) of the values; nan for none."""
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


# ---- outputs ---------------------------------------------------------------------------------------------
def write_json(path: Path, value, indent: int | None = 1) -> None:
    """Write value as JSON, atomically (a reader never sees half a file): PATH.tmp first, then renamed; its
    folder is made when missing (benchmarks/out/ is not in a fresh clone)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, indent=indent))
    os.replace(tmp, path)


def launch_command(args: list[str]) -> list[str]:
    """The command line of `python launch.py ARGS` with this interpreter."""
    return [sys.executable, str(REPO / "launch.py"), *args]


def echo_command(cmd: list[str], log) -> None:
    """Print "$ COMMAND" (without the interpreter) and write it to the log, flushed before the command runs."""
    print("$ " + " ".join(cmd[1:]), flush=True)
    log.write("$ " + " ".join(cmd[1:]) + "\n")
    log.flush()


def run_launch(args: list[str], log, *, env: dict | None = None, threads: int | None = None,
               stream: bool = False) -> float:
    """Run `python launch.py ARGS` in the repository root and return its wall time in seconds; exits on failure.

    The command is echoed (`echo_command`). Its output goes to the log; stream=True also shows it on stdout
    line by line and adds a "[seconds, rc]" line to the log after it. env: the child's environment (None:
    this process's); threads: its OMP_NUM_THREADS (torch's intra-op threads in the CLI process).
    """
    cmd = launch_command(args)
    echo_command(cmd, log)
    if threads is not None:
        env = dict(os.environ if env is None else env, OMP_NUM_THREADS=str(threads))
    start = time.perf_counter()
    if stream:
        proc = subprocess.Popen(cmd, cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        for line in proc.stdout:  # tqdm's \r updates arrive with the next newline or at the end
            sys.stdout.write(line)
            sys.stdout.flush()
            log.write(line)
        rc = proc.wait()
    else:
        rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - start
    if stream:
        log.write(f"[{seconds:.1f} s, rc {rc}]\n")
        log.flush()
    if rc != 0:
        raise SystemExit(f"launch.py {args[0] if args else ''} failed (exit {rc}): {' '.join(cmd)}; see {log.name}")
    return seconds

"""Training in its own process, so that the UI stays responsive.

``start_training`` records a queued run and starts ``launch.py train --run-id N`` as a
separate process; that process stores its progress (iteration, loss, history) and final
state in the database, where any client reads it. ``cancel_training`` asks the process
to stop (it checks between iterations). A process that dies (crash, ``kill -9``) is
noticed by ``run_state`` and its run marked failed; the active model only ever changes
when a run finishes and registers its version in one transaction.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from db import registry
from db.engine import DB_URL_VARIABLE, Database
from db.models import RunStatus
from partial_sup.presets import PRESETS

LAUNCH = Path(__file__).resolve().parents[1] / "launch.py"
ACTIVE = (RunStatus.queued, RunStatus.running)


@dataclass
class RunState:
    run_id: int
    status: str
    iteration: int
    iterations: int
    loss: float | None
    history: list
    message: str
    version_id: int | None

    @property
    def eta_seconds(self) -> float | None:
        """Estimated seconds left, from the pace of the iterations so far (None before the first record)."""
        timed = [h for h in self.history if len(h) > 2 and h[0] > 0]
        if self.finished or not timed:
            return None
        iteration, _, seconds = timed[-1][:3]
        return max(0.0, seconds / iteration * (self.iterations - iteration))

    @property
    def finished(self) -> bool:
        return self.status not in (RunStatus.queued.value, RunStatus.running.value)


def _process_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.waitpid(pid, os.WNOHANG)  # reaps it if it is our finished child
    except ChildProcessError:
        pass  # not our child: fine, ask the kernel below
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return True


def training_device(device: str | None = None) -> str:
    """The device type a training process will use: "cuda" or "cpu" (`device` None: cuda when available)."""
    if device:
        return "cuda" if str(device).startswith("cuda") else "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def start_training(db: Database, *, iterations: int | None = None, image_size: int | None = None,
                   backbone: str = "mobilenet_v2", backbone_weights: str | None = None, device: str | None = None,
                   seed: int = 0, lr: float | None = None, mode: str = "heads", mask_head: str = "transfer",
                   init: str = "auto") -> int:
    """Record a queued run and start `launch.py train` for it in its own process; iterations / image_size
    None: the mode's preset (`launch.py train`'s defaults, the same for the UI and the command line)."""
    preset = PRESETS[mode]
    planned = preset.iterations_on(training_device(device)) if iterations is None else iterations
    params = {"iterations": planned, "image_size": image_size or preset.image_size, "backbone": backbone,
              "seed": seed, "backbone_weights": backbone_weights, "device": device, "lr": lr, "mode": mode,
              "mask_head": mask_head, "init": init}
    run_id = registry.create_run(db, mode=mode, iterations=planned, params=params)
    command = [sys.executable, str(LAUNCH), "train", "--run-id", str(run_id), "--data-dir", str(db.data_dir),
               "--backbone", backbone, "--seed", str(seed), "--mode", mode, "--mask-head", mask_head,
               "--init", init, "--background"]
    if iterations is not None:
        command += ["--iterations", str(iterations)]
    if image_size is not None:
        command += ["--image-size", str(image_size)]
    if backbone_weights is not None:
        command += ["--backbone-weights", backbone_weights]
    if device is not None:
        command += ["--device", device]
    if lr is not None:
        command += ["--lr", str(lr)]
    logs = db.data_dir / "logs"
    logs.mkdir(exist_ok=True)
    with open(logs / f"run{run_id:04d}.log", "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True,  # the URL (password too) not in argv, which `ps` shows
                                   env=dict(os.environ, TQDM_MININTERVAL="5", **{DB_URL_VARIABLE: db.url}))
    registry.set_pid(db, run_id, process.pid)
    return run_id


def cancel_training(db: Database, run_id: int) -> None:
    registry.request_cancel(db, run_id)


def run_state(db: Database, run_id: int) -> RunState:
    run = registry.get_run(db, run_id)
    if run.status in ACTIVE and not _process_alive(run.pid):
        registry.finish_run(db, run_id, RunStatus.failed,
                            f"the training process ended unexpectedly; see {db.data_dir / 'logs'}/run{run_id:04d}.log")
        registry.remove_unfinished_checkpoints(db, run_id)
        run = registry.get_run(db, run_id)
    version = next((v.id for v in registry.list_versions(db) if v.training_run_id == run_id), None)
    return RunState(run_id=run.id, status=run.status.value, iteration=run.iteration, iterations=run.iterations,
                    loss=run.loss, history=list(run.history), message=run.message, version_id=version)

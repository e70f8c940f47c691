"""Training from the database: a recorded training run, a checkpoint and a new active model version.

``start_training`` records a queued run with its :class:`~services.presets.TrainingSpec` and starts
``launch.py train --run-id N`` as a separate process, so that the UI stays responsive; that process reads
the spec back from the run's record, stores its progress (iteration, loss, history) and final state in
the database, where any client reads it. ``cancel_training`` asks the process to stop (it checks between
iterations). A process that dies (crash, ``kill -9``) is noticed by ``run_state`` and its run marked
failed; the active model only ever changes when a run finishes and registers its version in one
transaction.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from db import registry
from db.dataset import reviewed_records
from db.engine import DB_URL_VARIABLE, Database
from db.errors import WorkbenchError
from db.models import RunStatus
from mnc_core import (BackboneWeightsError, MNCConfig, Predictor, TrainProgress, default_lr, distributed,
                      save_checkpoint, train_model, warm_start)
from mnc_core.backbone import body_blocks
from partial_sup.maskx import MaskXConfig, build_maskx_model, load_model
from services.dataset import DatabaseDataset
from services import limits
from services.box_masks import box_start_on_val
from services.evaluation import evaluate_on_val
from services.models import read_image
from services.presets import PRESETS, TrainingSpec

PROGRESS_EVERY = 10  # iterations between progress records in the database (and cancel checks)
CANCEL_POLL_S = 1.0  # between those, a cancel is looked for at least this often (an iteration can take seconds)
LAUNCH = Path(__file__).resolve().parents[1] / "launch.py"
ACTIVE = registry.ACTIVE
# A run is recorded before its process starts (the process reads its spec from it), so for a moment it has no pid:
# it counts as alive this long after it was recorded, then as a process that never started.
STARTING_GRACE_S = 120


def training_config(mode: str, image_size: int, backbone: str = "mobilenet_v2", batch_size: int = 1,
                    base: MNCConfig | None = None) -> MNCConfig:
    """The model and training configuration of a mode's run at an image size (short side)."""
    preset = PRESETS[mode]
    config = (base or MNCConfig()).replace(backbone=backbone, min_size=image_size,
                                           max_size=max(image_size, int(image_size * 5 / 3)),
                                           images_per_batch=batch_size, **dict(preset.config))
    if preset.freeze_body:  # the neck (FPN or 1x1 reduction), RPN and heads train
        config = config.replace(backbone_frozen_blocks=body_blocks(config))
    return config


@dataclass
class TrainResult:
    run_id: int
    version_id: int | None
    checkpoint: str | None
    iterations: int
    stopped_early: bool
    final_loss: float | None
    seconds: float
    metrics: dict | None = None

    def summary(self) -> str:
        if self.version_id is None:
            return f"training run {self.run_id} was cancelled after {self.iterations} iterations; the active model is unchanged"
        loss = f", final loss {self.final_loss:.3f}" if self.final_loss is not None else ""
        text = (f"training run {self.run_id}: {self.iterations} iterations in {self.seconds:.0f} s{loss}; "
                f"model version {self.version_id} ({self.checkpoint}) is now active")
        m = self.metrics or {}
        if m.get("val_images"):
            def fmt(key: str) -> str:
                return "-" if m.get(key) is None else f"{m[key]:.3f}"
            text += (f"\non {m['val_images']} reviewed val images: mask AP {fmt('mask_AP')} (set A {fmt('mask_AP_A')}, "
                     f"set B {fmt('mask_AP_B')}), box AP {fmt('box_AP')}")
        else:
            text += "\n(no reviewed val-split images: import or review some to get mask/box AP per version)"
        return text


def _initial_model(db: Database, config: MNCConfig, categories: list[tuple[int, str]], maskx: MaskXConfig | None,
                   backbone_weights: str | None, init: str):
    """A model for ``categories``: warm-started from the active version when ``init`` allows it and the
    active model has the same architecture; otherwise from ``backbone_weights``. -> (model, description)."""
    source = None
    if init in ("auto", "active"):
        active = registry.active_version(db)
        if active is not None:
            path = registry.checkpoint_path(db, active)
            try:
                source = load_model(path)
            except (OSError, ValueError) as exc:
                if init == "active":
                    raise WorkbenchError(f"the active model {path} cannot be loaded: {exc}") from None
            if source is not None:
                src_model, src_config, src_categories, src_extra = source
                same = (src_config.architecture() == config.architecture()
                        and src_extra.get("maskx") == (maskx.to_dict() if maskx else None))
                if not same:
                    if init == "active":
                        raise WorkbenchError("the active model has another architecture (backbone, sizes or mask "
                                             "head): train with --init backbone")
                    source = None
        elif init == "active":
            raise WorkbenchError("there is no active model to start from: train with --init backbone")
    if source is None:
        return build_maskx_model(config, len(categories), maskx, backbone_weights), "backbone weights"
    src_model, _, src_categories, _ = source
    model = build_maskx_model(config, len(categories), maskx, "none")
    report = warm_start(model, categories, src_model.state_dict(), src_categories)
    return model, f"active model ({report['classes_kept']} classes kept, {report['classes_new']} new)"


def train_from_database(db: Database, spec: TrainingSpec, *, config: MNCConfig | None = None,
                        show_progress: bool = False, run_id: int | None = None) -> TrainResult | None:
    """Train on the accepted annotations of the train split as ``spec`` says; on success the new model
    version is active.

    spec.mode: a key of PRESETS, "heads" (frozen backbone body, cached features) or "full" (end-to-end);
    spec.mask_head: "transfer" (Mask^X: box-only classes get masks through the weight transfer),
    "agnostic" (the class-agnostic baseline) or "none" (plain MNC); spec.init: see presets.INITS.
    ``config``: the MNCConfig to start from (default MNCConfig()). The new version is evaluated on the
    reviewed val-split images (mask AP on set A and B, box AP) and those metrics are stored.

    ``run_id``: a queued run (made by :func:`start_training`) that this process takes over; otherwise a
    new run is recorded. Progress and the final state are stored in it.

    Under torchrun (several processes, GPUs or machines; see mnc_core/distributed.py) every process
    reads the train split and trains its share of each global batch; only rank 0 writes: the run,
    its progress, the checkpoint and the new version (it also evaluates), and it alone decides on a
    cancel request. The other processes return None once training is over."""
    preset = spec.preset
    job = distributed.from_env()
    mode, mask_head, init, backbone, seed = spec.mode, spec.mask_head, spec.init, spec.backbone, spec.seed
    batch_size, backbone_weights, device = spec.batch_size, spec.backbone_weights, spec.device
    iterations = spec.planned_iterations(distributed.resolve_device(device, job).type)
    image_size = spec.planned_image_size()
    config = training_config(mode, image_size, backbone, batch_size, config)
    maskx = None if mask_head == "none" else MaskXConfig(method=mask_head)
    lr = default_lr(config) if spec.lr is None else spec.lr
    cache_bytes = None if spec.feature_cache_mb is None else int(spec.feature_cache_mb * 2**20)
    loader = {"cache_frozen_features": preset.cache_frozen_features, "cache_bytes": cache_bytes,
              "num_workers": spec.num_workers}
    main = job.is_main  # rank 0 (or the only process) writes to the database
    try:
        dataset = DatabaseDataset(db, "train")
    except WorkbenchError as exc:
        if run_id is not None and main:
            registry.claim_run(db, run_id, {})
            registry.finish_run(db, run_id, RunStatus.failed, str(exc))
        raise
    sets = dataset.snapshot.sets  # of the classes and labels the run started with (people go on labelling)
    config = config.for_instances(dataset.snapshot.most_instances)  # photos of hundreds of objects: all of them out
    set_a = sorted(c for c, s in sets.items() if s == "A")
    set_b = sorted(c for c, s in sets.items() if s == "B")
    params = {"iterations": iterations, "image_size": image_size, "backbone": backbone, "seed": seed, "lr": lr,
              "backbone_weights": backbone_weights, "images": len(dataset), "categories": len(dataset.categories),
              "mode": mode, "mask_head": mask_head, "init": init, "set_A": set_a, "set_B": set_b,
              "batch_size": batch_size, "spec": spec.to_dict()}
    if not main:
        return _train_other_rank(dataset, config, maskx, iterations=iterations, device=device, seed=seed, lr=lr,
                                 loader=loader)
    if run_id is None:
        run_id = registry.start_run(db, mode=mode, iterations=iterations, params=params)
    else:
        registry.claim_run(db, run_id, params)
    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=iterations, desc=f"training run {run_id} ({mode})", unit="it", file=sys.stderr,
                   dynamic_ncols=True)
    cancel = {"requested": False, "polled": time.monotonic()}

    def on_progress(progress: TrainProgress) -> None:
        loss = progress.losses.get("total", float("nan"))
        if bar is not None:
            bar.update(progress.iteration - bar.n)
            bar.set_postfix(loss=f"{loss:.3f}")
        if progress.iteration % PROGRESS_EVERY == 0 or progress.iteration == progress.iterations:
            cancel["requested"] = registry.record_progress(db, run_id, iteration=progress.iteration, loss=loss,
                                                           seconds=time.perf_counter() - start)
            cancel["polled"] = time.monotonic()
        elif time.monotonic() - cancel["polled"] >= CANCEL_POLL_S:
            cancel["requested"] = registry.cancel_is_requested(db, run_id)
            cancel["polled"] = time.monotonic()

    start = time.perf_counter()
    try:
        model, started_from = _initial_model(db, config, dataset.categories, maskx, backbone_weights, init)
        model, summary = train_model(dataset, config, iterations=iterations, device=device, seed=seed, lr=lr,
                                     model=model, on_progress=on_progress, should_stop=lambda: cancel["requested"],
                                     **loader)
        if summary["stopped_early"]:
            registry.finish_run(db, run_id, RunStatus.cancelled, "cancelled")
            return TrainResult(run_id, None, None, summary["iterations"], True, None, time.perf_counter() - start)
        train_seconds = time.perf_counter() - start
        train_loss = summary["final_losses"].get("total")
        registry.record_progress(db, run_id, iteration=summary["iterations"], loss=float(train_loss or "nan"),
                                 message="evaluating on the reviewed val images")
        predictor = Predictor(model, config, dataset.categories, summary["device"])
        metrics = evaluate_on_val(db, predictor, mask_set=set(set_a)) or {}
        if metrics:  # which mask start (GrabCut, the model, both) fits the val labels best, per class
            metrics["box_start"] = box_start_on_val(reviewed_records(db, "val"), predictor, read_image)
        metrics.update({"train_loss": train_loss, "train_images": len(dataset), "train_seconds": round(train_seconds, 1),
                        "mode": mode, "mask_head": mask_head, "set_A": set_a, "set_B": set_b,
                        "started_from": started_from})
        checkpoint = registry.new_checkpoint_path(db, run_id)
        extra = {"run_id": run_id, "iterations": summary["iterations"], "seed": seed, "lr": lr, "mode": mode,
                 "train_loss": train_loss}
        if maskx is not None:
            extra["maskx"] = maskx.to_dict()
        save_checkpoint(checkpoint, model, config, dataset.categories, extra=extra)
        batch = f" x{batch_size}" if batch_size > 1 else ""
        version_id = registry.register_version(
            db, checkpoint, name=f"{backbone} {mode} {mask_head} {iterations} it{batch} @ {image_size}px",
            config=config.to_dict(), metrics=metrics, run_id=run_id, activate=True)
        registry.finish_run(db, run_id, RunStatus.succeeded, f"model version {version_id}")
    except BackboneWeightsError as exc:
        registry.finish_run(db, run_id, RunStatus.failed, str(exc))
        raise WorkbenchError(str(exc)) from None
    except KeyboardInterrupt:
        registry.finish_run(db, run_id, RunStatus.cancelled, "interrupted")
        raise
    except BaseException as exc:
        registry.finish_run(db, run_id, RunStatus.failed, f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if bar is not None:
            bar.close()
    limits.remove_old_checkpoints(db)  # the retention rule, once the new version is registered and active
    return TrainResult(run_id, version_id, str(checkpoint), summary["iterations"], False, train_loss,
                       time.perf_counter() - start, metrics)


def _train_other_rank(dataset: DatabaseDataset, config: MNCConfig, maskx: MaskXConfig | None, *, iterations: int,
                      device: str | None, seed: int, lr: float, loader: dict) -> None:
    """A process of rank > 0 under torchrun: the same training loop without any database write. Its
    model only needs rank 0's architecture: DistributedDataParallel copies rank 0's weights into it
    (so it neither loads the active model nor downloads backbone weights)."""
    model = build_maskx_model(config, len(dataset.categories), maskx, "none")
    train_model(dataset, config, iterations=iterations, device=device, seed=seed, lr=lr, model=model, **loader)
    return None


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
    cancelling: bool = False  # a cancel was asked for and the run has not ended yet

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


def _run_alive(run) -> bool:
    """Whether a queued or running run's process is alive; one whose pid is not recorded yet is starting: alive
    for STARTING_GRACE_S after the run was recorded."""
    if run.pid is None:
        return datetime.now(timezone.utc) - run.created_at < timedelta(seconds=STARTING_GRACE_S)
    return _process_alive(run.pid)


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


def start_training(db: Database, spec: TrainingSpec) -> int:
    """Record a queued run with ``spec`` and start `launch.py train --run-id N` for it in its own process,
    which reads the spec back from the run (iterations / image_size None: the mode's preset, the same
    for the UI and the command line). One run at a time: WorkbenchError while another is queued or running
    (the database decides, so of two starts at the same moment exactly one starts a run)."""
    active = registry.active_run(db)
    if active is not None and not run_state(db, active).finished:  # (a run whose process died is marked failed)
        raise WorkbenchError(f"training run {active} is still running: wait for it or cancel it first")
    # the iterations the process will plan (train_from_database), for the progress bar
    planned = spec.planned_iterations(distributed.resolve_device(spec.device, distributed.Distributed()).type)
    params = {"spec": spec.to_dict(), "iterations": planned, "image_size": spec.planned_image_size()}
    run_id = registry.create_run(db, mode=spec.mode, iterations=planned, params=params)
    command = [sys.executable, str(LAUNCH), "train", "--run-id", str(run_id), "--data-dir", str(db.data_dir)]
    logs = db.data_dir / "logs"
    logs.mkdir(exist_ok=True)
    try:
        with open(logs / f"run{run_id:04d}.log", "ab") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True,  # the URL (password too) not in argv, which `ps` shows
                                       env=dict(os.environ, TQDM_MININTERVAL="5", **{DB_URL_VARIABLE: db.url}))
    except OSError as exc:
        registry.finish_run(db, run_id, RunStatus.failed, f"the training process could not be started: {exc}")
        raise WorkbenchError(f"the training process could not be started: {exc}") from None
    registry.set_pid(db, run_id, process.pid)
    # the server reaps its child when it ends (else a finished run stays a zombie process of the server)
    threading.Thread(target=process.wait, name=f"reap-training-{run_id}", daemon=True).start()
    return run_id


def queued_spec(db: Database, run_id: int) -> TrainingSpec:
    """The spec that ``start_training`` stored with a queued run."""
    params = registry.get_run(db, run_id).params or {}
    if "spec" not in params:
        raise WorkbenchError(f"training run {run_id} has no stored training spec: start runs with start_training")
    return TrainingSpec.from_dict(params["spec"])


def cancel_training(db: Database, run_id: int) -> None:
    registry.request_cancel(db, run_id)


def run_state(db: Database, run_id: int) -> RunState:
    run = registry.get_run(db, run_id)
    if run.status in ACTIVE and not _run_alive(run):
        what = ("ended unexpectedly" if run.pid is not None
                else f"did not start within {STARTING_GRACE_S} s (its process id was never recorded)")
        registry.finish_run(db, run_id, RunStatus.failed,
                            f"the training process {what}; see {db.data_dir / 'logs'}/run{run_id:04d}.log",
                            if_active=True)
        registry.remove_unfinished_checkpoints(db, run_id)
        run = registry.get_run(db, run_id)
    version = next((v.id for v in registry.list_versions(db) if v.training_run_id == run_id), None)
    return RunState(run_id=run.id, status=run.status.value, iteration=run.iteration, iterations=run.iterations,
                    loss=run.loss, history=list(run.history), message=run.message, version_id=version,
                    cancelling=run.cancel_requested and run.status in ACTIVE)

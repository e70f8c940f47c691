"""Model versions and training runs: the records that training processes and the UI share.

Checkpoint files live in ``<data_dir>/models``; the database keeps their relative paths.
Activating a version is one transaction, so exactly one version is active at any time.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from db.engine import Database
from db.errors import WorkbenchError
from db.models import ModelVersion, RunStatus, TrainingRun

NO_CHECKPOINT = ""  # a version's checkpoint_path once the retention rule removed its file (remove_old_checkpoints)
ACTIVE = (RunStatus.queued, RunStatus.running)  # a run that holds the training slot


def models_dir(db: Database) -> Path:
    path = db.data_dir / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def new_checkpoint_path(db: Database, run_id: int) -> Path:
    """Where a training run writes its model: models/runNNNN-<UTC time>.pt."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return models_dir(db) / f"run{run_id:04d}-{stamp}.pt"


def remove_unfinished_checkpoints(db: Database, run_id: int) -> None:
    """Delete what a dead run left of a checkpoint it was writing (mnc_core.save_checkpoint writes to a
    '.tmp-<name>.' file beside the final one and renames it only when complete)."""
    for partial in models_dir(db).glob(f".tmp-run{run_id:04d}-*"):
        partial.unlink(missing_ok=True)


def active_run(db: Database) -> int | None:
    """The queued or running training run (there is at most one), or None."""
    with db.session() as session:
        return session.scalar(select(TrainingRun.id).where(TrainingRun.status.in_(ACTIVE))
                              .order_by(TrainingRun.id.desc()).limit(1))


def create_run(db: Database, *, mode: str, iterations: int, params: dict[str, Any]) -> int:
    """A queued run, for a training process that is about to start. One run at a time: while another is queued or
    running, the database refuses the insert (the unique index uq_training_runs_one_active, so of two starts at
    the same moment exactly one gets its run) and this says which run to wait for or cancel."""
    try:
        with db.session() as session:
            run = TrainingRun(mode=mode, iterations=iterations, params=params, status=RunStatus.queued, history=[])
            session.add(run)
            session.flush()
            return run.id
    except IntegrityError:
        other = active_run(db)
        raise WorkbenchError(f"training run {other if other is not None else '(another)'} is still queued or "
                             "running: one run at a time; wait for it or cancel it first") from None


def claim_run(db: Database, run_id: int, params: dict[str, Any]) -> None:
    """The training process takes a queued run: running, with its pid."""
    with db.session() as session:
        run = session.get(TrainingRun, run_id)
        if run is None or run.status != RunStatus.queued:
            raise WorkbenchError(f"training run {run_id} does not exist or is not queued")
        run.status = RunStatus.running
        run.pid = os.getpid()
        run.params = {**run.params, **params}
        run.started_at = datetime.now(timezone.utc)


def start_run(db: Database, *, mode: str, iterations: int, params: dict[str, Any]) -> int:
    run_id = create_run(db, mode=mode, iterations=iterations, params=params)
    claim_run(db, run_id, {})
    return run_id


def set_pid(db: Database, run_id: int, pid: int) -> None:
    with db.session() as session:
        session.get(TrainingRun, run_id).pid = pid


def record_progress(db: Database, run_id: int, *, iteration: int, loss: float, message: str = "",
                    seconds: float | None = None) -> bool:
    """Store the run's progress (history entries: [iteration, loss] or [iteration, loss, seconds since the
    run started], from which clients estimate the time left); returns True when someone asked to cancel it."""
    with db.session() as session:
        run = session.get(TrainingRun, run_id)
        run.iteration = iteration
        run.loss = loss
        if not run.history or run.history[-1][0] != iteration:
            entry = [iteration, loss] if seconds is None else [iteration, loss, round(float(seconds), 1)]
            run.history = [*run.history, entry]
        if message:
            run.message = message
        return run.cancel_requested


def cancel_is_requested(db: Database, run_id: int) -> bool:
    with db.session() as session:
        return bool(session.scalar(select(TrainingRun.cancel_requested).where(TrainingRun.id == run_id)))


def request_cancel(db: Database, run_id: int) -> None:
    with db.session() as session:
        session.execute(update(TrainingRun).where(TrainingRun.id == run_id).values(cancel_requested=True))


def finish_run(db: Database, run_id: int, status: RunStatus, message: str = "", *, if_active: bool = False) -> None:
    """The run's final state. ``if_active``: only if it is still queued or running (a watcher that found its
    process gone does not overwrite what the process wrote as it ended)."""
    with db.session() as session:
        still = [TrainingRun.status.in_(ACTIVE)] if if_active else []
        session.execute(update(TrainingRun).where(TrainingRun.id == run_id, *still)
                        .values(status=status, message=message, finished_at=datetime.now(timezone.utc))
                        .execution_options(synchronize_session=False))


def get_run(db: Database, run_id: int) -> TrainingRun:
    with db.session() as session:
        run = session.get(TrainingRun, run_id)
        if run is None:
            raise WorkbenchError(f"there is no training run {run_id}")
        return run


def register_version(db: Database, checkpoint: Path, *, name: str, config: dict, metrics: dict,
                     run_id: int | None = None, activate: bool = True) -> int:
    """Add a model version for a checkpoint inside the data folder; optionally make it the active one."""
    relative = Path(checkpoint).resolve().relative_to(db.data_dir)
    with db.session() as session:
        version = ModelVersion(name=name, checkpoint_path=str(relative), config=config, metrics=metrics,
                               training_run_id=run_id, is_active=False)
        session.add(version)
        session.flush()
        if activate:
            session.execute(update(ModelVersion).values(is_active=ModelVersion.id == version.id))
        return version.id


def activate_version(db: Database, version_id: int) -> None:
    with db.session() as session:
        version = session.get(ModelVersion, version_id, with_for_update=True)  # not pruned while we activate it
        if version is None:
            raise WorkbenchError(f"there is no model version {version_id}; `launch.py models` lists them")
        if version.checkpoint_path == NO_CHECKPOINT:
            raise WorkbenchError(f"model version {version_id} has no checkpoint any more: its file was removed by "
                                 "the retention rule (the active version and the newest inactive ones keep theirs; "
                                 "WORKBENCH_KEEP_CHECKPOINTS says how many); activate a version that has one, or "
                                 "train again")
        session.execute(update(ModelVersion).values(is_active=ModelVersion.id == version_id))


def remove_old_checkpoints(db: Database, keep_inactive: int) -> list[Path]:
    """The retention rule of checkpoints: the active version and the ``keep_inactive`` newest inactive ones keep
    their files in models/; the older inactive versions' files are deleted and their rows stay, marked as having
    none (checkpoint_path NO_CHECKPOINT: activating one says so). A row is marked (committed) before its file
    goes, only while it is still inactive, and a file another version still names stays. -> the deleted files."""
    with db.session() as session:
        inactive = session.execute(select(ModelVersion.id, ModelVersion.checkpoint_path).where(
            ModelVersion.is_active.is_(False), ModelVersion.checkpoint_path != NO_CHECKPOINT)
            .order_by(ModelVersion.id.desc())).all()
        marked = []
        for version_id, relative in inactive[max(0, int(keep_inactive)):]:
            if Path(relative).parts[:1] != ("models",):  # a file the workbench did not write: left alone
                continue
            done = session.execute(update(ModelVersion).where(
                ModelVersion.id == version_id, ModelVersion.is_active.is_(False),
                ModelVersion.checkpoint_path == relative).values(checkpoint_path=NO_CHECKPOINT))
            if done.rowcount == 1:
                marked.append(relative)
    with db.session() as session:
        named = set(session.scalars(select(ModelVersion.checkpoint_path).where(
            ModelVersion.checkpoint_path.in_(marked)))) if marked else set()
    removed = []
    folder = models_dir(db).resolve()
    for relative in sorted(set(marked) - named):
        path = db.data_dir / relative
        if path.resolve().parent == folder and not path.is_symlink() and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def list_versions(db: Database) -> list[ModelVersion]:
    with db.session() as session:
        return list(session.scalars(select(ModelVersion).order_by(ModelVersion.id)))


def active_version(db: Database) -> ModelVersion | None:
    with db.session() as session:
        return session.scalars(select(ModelVersion).where(ModelVersion.is_active.is_(True))).first()


def checkpoint_path(db: Database, version: ModelVersion) -> Path:
    return db.data_dir / version.checkpoint_path


def active_checkpoint(db: Database) -> Path:
    version = active_version(db)
    if version is None:
        raise WorkbenchError("no model has been trained yet: run `python launch.py train` "
                             "(or pass --checkpoint FILE)")
    path = checkpoint_path(db, version)
    if not path.is_file():
        raise WorkbenchError(f"the active model version {version.id} has lost its checkpoint {path}; "
                             "activate another version or train again")
    return path

#!/usr/bin/env python
"""The workbench's one entry point.

    python launch.py                 start the browser workbench (same as `serve`)
    python launch.py SUB-COMMAND -h  help of a sub-command
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_DATA_DIR = "./workbench_data"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_USERS_FILE = "./users.txt"


def _progress(iterable, total, description):
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=description, unit="", dynamic_ncols=True, file=sys.stderr)


def _open(args, migrate: bool = True):
    from db.engine import open_database

    return open_database(args.data_dir, args.db, migrate=migrate)


def cmd_serve(args) -> int:
    from app.ui import serve
    from services.users import server_auth

    server_auth(args.host, args.auth_file)  # refuses before the database is opened
    serve(_open(args), host=args.host, port=args.port, auth_file=args.auth_file,
          max_file_size=int(args.max_upload_mb * 2**20), max_request_bytes=int(args.max_request_mb * 2**20),
          device=args.device)
    return 0


def cmd_users(args) -> int:
    import getpass

    from services import users
    from db.errors import WorkbenchError

    if args.action == "list":
        for name in sorted(users.read_users(args.file)):
            print(name)
        return 0
    if args.name is None:
        raise WorkbenchError(f"`users {args.action}` needs a user NAME")
    if args.action == "remove":
        users.remove_user(args.file, args.name)
        print(f"user {args.name} removed from {args.file}")
        return 0
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            raise WorkbenchError("the two passwords differ; nothing was changed")
    new = users.set_password(args.file, args.name, password)
    print(f"user {args.name} {'added to' if new else 'has a new password in'} {args.file}")
    return 0


def cmd_import_coco(args) -> int:
    from db.coco_import import import_coco

    db = _open(args)
    report = import_coco(db, args.annotations, args.images, split=args.split, progress=_progress)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"imported {args.annotations}: {report.summary()}")
    return 0


def cmd_export_coco(args) -> int:
    from db.coco_export import export_coco

    report = export_coco(_open(args), args.out, mask_format=args.mask_format, progress=_progress)
    print(f"exported {report.summary()}")
    return 0


def _lowest_cpu_priority() -> None:
    """SCHED_IDLE (Linux): this process gets the CPU only when nothing else wants it, so a server beside it
    answers as if it were alone; elsewhere nice 19."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19 - os.nice(0))


def training_spec(args):
    """The run's TrainingSpec from `launch.py train`'s flags."""
    from services.presets import TrainingSpec

    return TrainingSpec(mode=args.mode, iterations=args.iterations, image_size=args.image_size,
                        backbone=args.backbone, backbone_weights=args.backbone_weights, device=args.device,
                        seed=args.seed, lr=args.lr, mask_head=args.mask_head, init=args.init,
                        batch_size=args.batch_size, num_workers=args.workers, feature_cache_mb=args.feature_cache_mb,
                        low_priority=args.background)


def cmd_train(args) -> int:
    from mnc_core import distributed
    from services.training import queued_spec, train_from_database

    job = distributed.from_env()
    main = job.is_main  # under torchrun: rank 0 migrates, records and prints
    db = _open(args, migrate=main)
    if job.enabled and main:
        print(f"distributed training under torchrun: {job.world_size} process(es), "
              f"{'NCCL' if distributed.resolve_device(args.device, job).type == 'cuda' else 'gloo'}", flush=True)
    # a run queued by the workbench (--run-id) brings its own spec; otherwise the flags make one
    spec = training_spec(args) if args.run_id is None else queued_spec(db, args.run_id)
    if spec.low_priority:
        _lowest_cpu_priority()
    result = train_from_database(db, spec, show_progress=True, run_id=args.run_id)
    if result is not None:
        print(result.summary())
    return 0


def cmd_predict(args) -> int:
    from services.models import predict_files

    report = predict_files(_open(args), args.images, args.out, checkpoint=args.checkpoint, device=args.device,
                           score_threshold=args.score_threshold, progress=_progress)
    print(report)
    return 0


def cmd_evaluate(args) -> int:
    from services.evaluation import evaluate_file, format_metrics

    metrics = evaluate_file(_open(args), args.annotations, args.images, args.out, checkpoint=args.checkpoint,
                            device=args.device, progress=_progress)
    print(format_metrics(metrics))
    print(f"metrics written to {args.out} (model on {metrics['device']})")
    return 0


def cmd_models(args) -> int:
    from db import registry
    from services.versions import version_metrics

    db = _open(args)
    if args.activate is not None:
        registry.activate_version(db, args.activate)
        print(f"model version {args.activate} is now active")
    versions = registry.list_versions(db)
    if not versions:
        print("no model versions yet: `python launch.py train` makes one")
    for v in versions:
        metrics = ", ".join(f"{header} {text}" for header, text in version_metrics(v.metrics).items())
        checkpoint = v.checkpoint_path or "(checkpoint removed by retention)"
        print(f"{'*' if v.is_active else ' '} v{v.id:<4} {v.created_at:%Y-%m-%d %H:%M}  {v.name}  [{metrics}]  "
              f"{checkpoint}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from db.engine import DB_URL_VARIABLE
    from db.uploads import MAX_UPLOAD_BYTES

    default_upload_mb = MAX_UPLOAD_BYTES / 2**20
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", default=DEFAULT_DATA_DIR, type=Path,
                        help=f"folder of the SQLite database, stored images and checkpoints (default {DEFAULT_DATA_DIR})")
    common.add_argument("--db", metavar="URL", default=os.environ.get(DB_URL_VARIABLE) or None,
                        help="database URL to use instead of the SQLite file in --data-dir "
                             f"(e.g. postgresql://user@host:5432/db; default: ${DB_URL_VARIABLE} if set, "
                             "which keeps a password out of the command line)")

    parser = argparse.ArgumentParser(
        prog="workbench", description="Instance segmentation annotation workbench. Without a sub-command: serve "
                                      "(`workbench --port 8000` = `workbench serve --port 8000`; `python launch.py` is the same).")
    sub = parser.add_subparsers(dest="command", metavar="SUB-COMMAND")

    serve = sub.add_parser("serve", parents=[common], help="start the browser workbench (the default)")
    serve.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    serve.add_argument("--auth-file", type=Path, default=None, metavar="USERS_FILE",
                       help="require logins from this users file (`users add`); required when --host is not a "
                            "loopback address")
    serve.add_argument("--max-upload-mb", type=float, default=default_upload_mb,
                       help=f"largest file the server accepts in one upload, in MB (default {default_upload_mb:g})")
    serve.add_argument("--max-request-mb", type=float, default=64.0,
                       help="largest request body the server reads, uploads aside, in MB (default 64)")
    serve.add_argument("--device", default="auto",
                       help="where the model runs: auto (the GPU when there is one, default), cpu, cuda, cuda:N; "
                            "retraining from the page uses the same")
    serve.set_defaults(func=cmd_serve)

    users = sub.add_parser("users", help="logins for `serve --auth-file`: add NAME (asks for the password), "
                                         "remove NAME, list")
    users.add_argument("action", choices=["add", "remove", "list"])
    users.add_argument("name", nargs="?", default=None, help="user name")
    users.add_argument("--file", type=Path, default=Path(DEFAULT_USERS_FILE),
                       help=f"users file (default {DEFAULT_USERS_FILE}); passwords are stored as salted scrypt hashes")
    users.add_argument("--password-stdin", action="store_true", help="read the password from standard input "
                                                                      "(for scripts) instead of asking")
    users.set_defaults(func=cmd_users)

    imp = sub.add_parser("import-coco", parents=[common], help="import a COCO instances file and its images")
    imp.add_argument("annotations", type=Path, help="COCO instances JSON file")
    imp.add_argument("--images", type=Path, required=True, help="folder that the file's file_name entries are relative to")
    imp.add_argument("--split", choices=["train", "val"], default="train", help="split the images join (default train)")
    imp.set_defaults(func=cmd_import_coco)

    exp = sub.add_parser("export-coco", parents=[common], help="export all images and accepted annotations as COCO")
    exp.add_argument("--out", type=Path, required=True, help="output JSON file")
    exp.add_argument("--mask-format", choices=["polygon", "rle"], default="polygon",
                     help="polygon (most widely readable, default) or rle (exact, keeps holes)")
    exp.set_defaults(func=cmd_export_coco)

    from services.presets import BACKBONES, INITS, MASK_HEADS, PRESETS

    presets = "; ".join(f"{mode}: {p.iterations} iterations on a CPU, {p.gpu_iterations} on a GPU, at {p.image_size} px"
                        for mode, p in PRESETS.items())
    train = sub.add_parser("train", parents=[common], help="train the model on the train split; registers a new active model version")
    train.add_argument("--iterations", type=int, default=None, help=f"default: the mode's preset ({presets})")
    train.add_argument("--image-size", type=int, default=None,
                       help="short side of training images in pixels (default: the mode's preset)")
    train.add_argument("--batch-size", type=int, default=1,
                       help="images per iteration (and per process under torchrun); the learning rate scales with "
                            "it: x batch for SGD, x sqrt(batch) for AdamW (default 1)")
    train.add_argument("--workers", type=int, default=None,
                       help="data-loading worker processes (default: one per spare CPU core, at most 4; 0: none)")
    train.add_argument("--feature-cache-mb", type=float, default=None,
                       help="heads mode: memory for the cached backbone features (default a quarter of the machine's "
                            "memory, at least 2048 on a CPU / 4096 on a GPU, at most 8192); the least recently used "
                            "are dropped beyond it")
    train.add_argument("--backbone", choices=BACKBONES, default="mobilenet_v2")
    train.add_argument("--backbone-weights", default=None, metavar="PATH|none",
                       help="ImageNet weights file for the backbone, or 'none' for random initialisation; "
                            "default: torchvision's ImageNet weights (downloaded or cached)")
    train.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--lr", type=float, default=None,
                       help="learning rate for a batch of one image (default: the model's; scaled with --batch-size)")
    train.add_argument("--mode", choices=list(PRESETS), default="heads",
                       help="; ".join(f"{mode}: {p.description}" for mode, p in PRESETS.items()) + " (default heads, "
                            "what the workbench's Train button runs)")
    train.add_argument("--mask-head", choices=MASK_HEADS, default="transfer",
                       help="transfer (default): Mask^X weight transfer, so box-only classes get masks; agnostic: "
                            "the class-agnostic baseline; none: plain MNC masks")
    train.add_argument("--init", choices=INITS, default="auto",
                       help="start from the active model version (active), from the backbone weights (backbone), "
                            "or the active one when it has the same architecture (auto, default)")
    train.add_argument("--background", action="store_true",
                       help="run at the lowest CPU priority (SCHED_IDLE on Linux, else nice 19): the CPU goes to "
                            "the server first; the UI's Retrain uses it")
    train.add_argument("--run-id", type=int, default=None, help=argparse.SUPPRESS)  # a queued run: its stored spec
    train.set_defaults(func=cmd_train)

    pred = sub.add_parser("predict", parents=[common], help="predict instances on images, write COCO results JSON")
    pred.add_argument("images", nargs="+", type=Path, help="image files")
    pred.add_argument("--out", type=Path, required=True, help="COCO results JSON file")
    pred.add_argument("--checkpoint", type=Path, default=None, help="model checkpoint (default: the active model version)")
    pred.add_argument("--device", default="auto", help="auto (the GPU when there is one, default), cpu, cuda, cuda:N")
    pred.add_argument("--score-threshold", type=float, default=None)
    pred.set_defaults(func=cmd_predict)

    ev = sub.add_parser("evaluate", parents=[common], help="COCOeval of the model on a COCO ground-truth file")
    ev.add_argument("--annotations", type=Path, required=True, help="ground-truth COCO instances JSON")
    ev.add_argument("--images", type=Path, required=True, help="folder of the ground truth's images")
    ev.add_argument("--out", type=Path, required=True, help="metrics JSON file")
    ev.add_argument("--checkpoint", type=Path, default=None, help="model checkpoint (default: the active model version)")
    ev.add_argument("--device", default="auto", help="auto (the GPU when there is one, default), cpu, cuda, cuda:N")
    ev.set_defaults(func=cmd_evaluate)
    models = sub.add_parser("models", parents=[common], help="list model versions (* = active); --activate N")
    models.add_argument("--activate", type=int, default=None, metavar="N", help="make version N the active model")
    models.set_defaults(func=cmd_models)
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = build_parser()
    argv = list(argv)
    commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001 (argparse keeps them here)
    if not argv or (argv[0] not in commands and argv[0] not in ("-h", "--help")):
        argv = ["serve", *argv]  # serve is the default sub-command
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from db.errors import WorkbenchError

    try:
        return args.func(args)
    except WorkbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

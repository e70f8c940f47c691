"""Self-describing checkpoints: plain types + tensors only, atomic writes, weights_only loads."""
from __future__ import annotations

import errno
import os
import tempfile
from typing import Any, Callable

import torch
from torch import nn

from .config import MNCConfig
from .model import MNC, build_model

FORMAT = "mnc_core.checkpoint/1"
_PLAIN = (str, int, float, bool, type(None))


def _plain(value: Any, where: str) -> Any:
    if isinstance(value, _PLAIN) or isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v, where) for k, v in value.items()}
    try:  # numpy scalars
        import numpy as np
        if isinstance(value, np.generic):
            return value.item()
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"{where}: value of type {type(value).__name__} is not a plain type")


class _KeepWriteError:
    """A file for torch.save that keeps the OSError of a failed write (e.g. ENOSPC: the disk is full)."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def save_checkpoint(path: str | os.PathLike, model: MNC, config: MNCConfig,
                    categories: list[tuple[int, str]], extra: dict | None = None) -> None:
    """Write {format, config, num_classes, categories, state_dict, extra} atomically (temp file in the
    same directory, then os.replace)."""
    path = os.fspath(path)
    cats = [[int(cid), str(name)] for cid, name in categories]
    if len(cats) != model.num_classes:
        raise ValueError(f"{len(cats)} categories given for a model with {model.num_classes} classes")
    payload = {
        "format": FORMAT,
        "config": config.to_dict(),
        "num_classes": int(model.num_classes),
        "categories": cats,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": _plain(dict(extra or {}), "extra"),
    }
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + ".", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            writer = _KeepWriteError(f)
            try:
                torch.save(payload, writer)
            except RuntimeError:  # torch's zip writer reports a failed write without its errno
                if writer.error is not None:
                    raise writer.error from None
                raise
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise OSError(e.errno, f"could not write checkpoint {path}: {e.strerror} (the disk is full or the file "
                                   "too large); nothing was written") from e
        raise


def load_checkpoint(path: str | os.PathLike, device: str | torch.device | None = None,
                    final_mask_head: Callable[[MNCConfig, dict], nn.Module | None] | None = None
                    ) -> tuple[MNC, MNCConfig, list[tuple[int, str]], dict]:
    """-> (model in eval mode on `device` (default CPU), config, categories, extra).

    final_mask_head: builds the model's final-mask head (see `MNC`) from (config, extra), for
    checkpoints of models that have one (e.g. partial_sup's Mask^X head, described in extra)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"cannot read checkpoint {path}: not a valid MNC checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not an MNC checkpoint (missing or unknown 'format')")
    try:
        config = MNCConfig.from_dict(payload["config"])
        categories = [(int(c[0]), str(c[1])) for c in payload["categories"]]
        extra = dict(payload.get("extra") or {})
        head = final_mask_head(config, extra) if final_mask_head is not None else None
        if head is None and any(k.startswith("final_mask_head.") for k in payload["state_dict"]):
            raise ValueError("the model has a final-mask head (e.g. Mask^X); load it with its builder: "
                             "load_checkpoint(path, final_mask_head=...), e.g. partial_sup.maskx.load_model")
        model = build_model(config, int(payload["num_classes"]), backbone_weights="none", final_mask_head=head)
        model.load_state_dict(payload["state_dict"], strict=True)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"checkpoint {path} is corrupt or incompatible: {type(e).__name__}: {e}") from e
    model.to(torch.device(device) if device is not None else torch.device("cpu")).eval()
    return model, config, categories, extra

"""Adding images that people upload (the UI, the API): each file is stored whole or refused."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from db.progress import Progress, no_progress
from db.engine import Database
from db.errors import BadImageError, WorkbenchError
from db.imagestore import ImageStore, probe
from db.models import Image, Split

MAX_UPLOAD_BYTES = 200 * 1024 * 1024


@dataclass
class UploadResult:
    image_ids: list[int] = field(default_factory=list)  # one per accepted file, in order (existing ones too)
    new_ids: list[int] = field(default_factory=list)  # those this upload added, in order
    added: int = 0
    existing: int = 0
    refused: list[str] = field(default_factory=list)  # one message per refused file

    def summary(self) -> str:
        text = f"{self.added} image(s) added, {self.existing} already there"
        if self.refused:
            text += f"; {len(self.refused)} refused:\n" + "\n".join(f"  - {r}" for r in self.refused)
        return text


def add_images(db: Database, files: list[str | Path], *, split: str = "train", names: list[str] | None = None,
               progress: Progress = no_progress) -> UploadResult:
    """Store the image files (by content hash) and record them; unreadable files are refused with a reason.

    ``names``: the names people know the files by (an upload's original name), default the file names."""
    if split not in ("train", "val"):
        raise WorkbenchError(f"split {split!r} is neither 'train' nor 'val'")
    names = names or [Path(f).name for f in files]
    store = ImageStore(db.data_dir)
    result = UploadResult()
    with store.storing():  # a file stored before its row commits: the start-up cleanup must not take it
        for path, name in progress(list(zip(files, names)), len(files), "images"):
            path = Path(path)
            try:
                size = path.stat().st_size
                if size > MAX_UPLOAD_BYTES:
                    raise BadImageError(f"{name}: {size / 2**20:.0f} MB is more than the "
                                        f"{MAX_UPLOAD_BYTES // 2**20} MB limit")
                data = path.read_bytes()
                info = probe(data, name)
            except FileNotFoundError:
                result.refused.append(f"{name}: the file is gone (upload interrupted?); upload it again")
                continue
            except BadImageError as exc:
                result.refused.append(str(exc))
                continue
            stored: Path | None = None
            try:
                with db.session() as session:  # the file and its row: both or neither
                    image_id = session.scalar(select(Image.id).where(Image.sha256 == info.sha256))
                    if image_id is not None:
                        result.existing += 1
                        result.image_ids.append(image_id)
                        continue
                    stored_path, created = store.put(data, info)
                    stored = db.data_dir / stored_path if created else None
                    image = Image(sha256=info.sha256, stored_path=stored_path, file_name=Path(name).name,
                                  width=info.width, height=info.height, split=Split(split))
                    session.add(image)
                    session.flush()
                    result.image_ids.append(image.id)
                result.new_ids.append(result.image_ids[-1])
                result.added += 1
            except IntegrityError:  # someone else added the same image meanwhile: theirs stands (and its file)
                with db.session() as session:
                    image_id = session.scalar(select(Image.id).where(Image.sha256 == info.sha256))
                if image_id is None:
                    raise
                result.existing += 1
                result.image_ids.append(image_id)
            except BaseException:
                if stored is not None:
                    stored.unlink(missing_ok=True)
                raise
    return result

"""Content-addressed image files in ``<data_dir>/images`` and safe image decoding."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # not POSIX: no lock; the start-up cleanup then relies on the files' age alone
    fcntl = None

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from db.errors import BadImageError

MAX_PIXELS = 150_000_000  # a 10000 x 10000 photo is fine; beyond this, refuse (decompression bombs)
Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # Pillow warns above this and raises above twice this; we refuse above it

# EXIF orientations 5-8 rotate by 90 degrees: width and height swap.
_ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}
FORMAT_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "WEBP": ".webp", "TIFF": ".tif", "GIF": ".gif"}
# a stored file's path relative to the data folder: images/<first 2 of the sha256>/<sha256><extension>
STORED_NAME = re.compile(r"images/([0-9a-f]{2})/(\1[0-9a-f]{62})(" +
                         "|".join(re.escape(e) for e in FORMAT_EXTENSIONS.values()) + ")")
LOCK_NAME = ".image-store.lock"  # in the data folder (flock: ImageStore.storing / ImageStore.sweeping)


@dataclass(frozen=True)
class ImageInfo:
    sha256: str
    width: int  # after EXIF orientation
    height: int
    extension: str


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def probe(data: bytes, name: str) -> ImageInfo:
    """Check that ``data`` is a complete, decodable image; size after EXIF orientation."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt = image.format or ""
            width, height = image.size  # from the header: nothing is decoded yet
            if width * height > MAX_PIXELS:  # refused before decoding (a small file can hold a huge image)
                raise BadImageError(f"{name}: {width}x{height} is more than {MAX_PIXELS // 1_000_000} megapixels; "
                                    "downscale it before uploading")
            orientation = image.getexif().get(_ORIENTATION_TAG, 1)
            if fmt == "JPEG":
                image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))  # fast, still reads every byte
            image.load()
    except UnidentifiedImageError:
        raise BadImageError(f"{name}: not an image file (Pillow cannot identify it); remove it or replace it with the real image") from None
    except Image.DecompressionBombError:
        raise BadImageError(f"{name}: the image is larger than {MAX_PIXELS // 1_000_000} megapixels; "
                            "downscale it before uploading") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImageError(f"{name}: the image cannot be decoded ({exc}); the file is corrupt or truncated, replace it") from None
    if width * height > MAX_PIXELS:
        raise BadImageError(f"{name}: {width}x{height} is more than {MAX_PIXELS // 1_000_000} megapixels; "
                            "downscale it before uploading")
    if fmt not in FORMAT_EXTENSIONS:
        raise BadImageError(f"{name}: image format {fmt or 'unknown'} is not supported; convert it to JPEG or PNG")
    if orientation in _SWAPPING_ORIENTATIONS:
        width, height = height, width
    return ImageInfo(sha256=sha256_of(data), width=width, height=height, extension=FORMAT_EXTENSIONS[fmt])


def to_rgb(image: Image.Image) -> np.ndarray:
    """Any Pillow image -> (H, W, 3) uint8 RGB: 16/32-bit greyscale scaled down (not clipped),
    transparency composited on white, CMYK and palettes converted."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float32)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        grey = np.clip(values * (255.0 / top), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))


def load_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file to an (H, W, 3) uint8 RGB array, EXIF orientation applied."""
    with Image.open(path) as image:
        return to_rgb(ImageOps.exif_transpose(image))


def atomic_write(path: Path, data: bytes) -> None:
    """Write through a temporary file in the same folder and rename: never a truncated file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ImageStore:
    """Stores each image once, named by its content hash."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.root = self.data_dir / "images"

    def relative_path(self, info: ImageInfo) -> str:
        return f"images/{info.sha256[:2]}/{info.sha256}{info.extension}"

    def absolute(self, stored_path: str) -> Path:
        path = (self.data_dir / stored_path).resolve()
        if not path.is_relative_to(self.data_dir.resolve()):
            raise BadImageError(f"stored path {stored_path!r} leaves the data folder")
        return path

    def put(self, data: bytes, info: ImageInfo) -> tuple[str, bool]:
        """Store the bytes; returns (stored path, whether a new file was written). A file already there is
        touched: it is new again for the start-up cleanup's age check (db.housekeeping)."""
        relative = self.relative_path(info)
        path = self.data_dir / relative
        if path.exists() and path.stat().st_size == len(data):
            with contextlib.suppress(OSError):
                os.utime(path)
            return relative, False
        atomic_write(path, data)
        return relative, True

    @contextlib.contextmanager
    def storing(self) -> Iterator[None]:
        """Held while files are stored whose image rows are not committed yet (an import, an upload): a shared
        lock (flock on the data folder's LOCK_NAME) that any number of processes hold at once; the start-up
        cleanup leaves unreferenced files alone while anyone holds it."""
        with self._locked(exclusive=False):
            yield

    @contextlib.contextmanager
    def sweeping(self) -> Iterator[bool]:
        """The start-up cleanup's lock: yields True when no process is storing files (see :meth:`storing`),
        False when one is, or when the lock cannot be taken here (then nothing may be swept)."""
        with self._locked(exclusive=True) as held:
            yield held

    @contextlib.contextmanager
    def _locked(self, exclusive: bool) -> Iterator[bool]:
        if fcntl is None:
            yield True
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir / LOCK_NAME, "a") as handle:  # closing it releases the lock
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB if exclusive else fcntl.LOCK_SH)
                held = True
            except OSError:  # held by others (exclusive: not waited for), or no locks on this file system
                held = False
            yield held

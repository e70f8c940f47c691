"""Uploaded images: odd formats are converted, bad files refused with a reason, nothing half-saved."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from db.imagestore import load_rgb
from db.uploads import add_images


def save(path, image: Image.Image, **kwargs):
    image.save(path, **kwargs)
    return path


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8))
    out = {"rgb": save(tmp_path / "a.jpg", rgb, quality=95)}
    out["cmyk"] = save(tmp_path / "cmyk.jpg", rgb.convert("CMYK"))
    sixteen = Image.fromarray((np.arange(40 * 30).reshape(30, 40) * 50).astype(np.uint16))
    out["16bit"] = save(tmp_path / "deep.png", sixteen)
    rgba = Image.new("RGBA", (40, 30), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 20, 30))
    out["alpha"] = save(tmp_path / "alpha.png", rgba)
    exif = Image.Exif()
    exif[0x0112] = 6
    out["rotated"] = save(tmp_path / "phone.jpg", rgb, exif=exif)
    out["text"] = tmp_path / "notes.jpg"
    out["text"].write_text("not an image")
    data = (tmp_path / "a.jpg").read_bytes()
    out["truncated"] = tmp_path / "broken.jpg"
    out["truncated"].write_bytes(data[: len(data) // 2])
    return out


def test_odd_formats_are_converted_and_bad_files_refused(database, files):
    order = ["rgb", "cmyk", "16bit", "alpha", "rotated", "text", "truncated"]
    result = add_images(database, [files[k] for k in order])
    assert result.added == 5 and result.existing == 0 and len(result.image_ids) == 5
    assert len(result.refused) == 2
    assert "notes.jpg" in result.refused[0] and "not an image" in result.refused[0]
    assert "broken.jpg" in result.refused[1]
    stored = sorted(p for p in (database.data_dir / "images").rglob("*") if p.is_file())
    assert len(stored) == 5
    from db.queries import list_images

    sizes = {row["file_name"]: (row["width"], row["height"]) for row in list_images(database)}
    assert sizes["phone.jpg"] == (30, 40)  # EXIF orientation 6: portrait
    assert sizes["deep.png"] == (40, 30)
    deep = load_rgb(files["16bit"])
    assert deep.dtype == np.uint8 and deep.shape == (30, 40, 3)
    assert deep.max() == int((40 * 30 - 1) * 50 * 255 / 65535)  # 233: scaled from 16 bits
    assert deep[0, 0, 0] == 0 and deep[-1, -1, 0] > 200  # scaled, not clipped to white
    alpha = load_rgb(files["alpha"])
    assert tuple(alpha[0, 0]) == (0, 0, 255) and tuple(alpha[0, -1]) == (255, 255, 255)  # transparent -> white
    assert load_rgb(files["rotated"]).shape == (40, 30, 3)
    assert load_rgb(files["cmyk"]).shape == (30, 40, 3)
    again = add_images(database, [files["rgb"]])
    assert (again.added, again.existing, again.image_ids) == (0, 1, result.image_ids[:1])


def test_a_10000_pixel_photo_is_kept_whole(database, tmp_path):
    big = tmp_path / "big.png"
    Image.new("L", (10_000, 10_000), 128).save(big)
    result = add_images(database, [big])
    assert result.added == 1, result.refused
    from db.queries import list_images

    assert (list_images(database)[0]["width"], list_images(database)[0]["height"]) == (10_000, 10_000)


def test_a_decompression_bomb_is_refused(database, tmp_path):
    bomb = tmp_path / "bomb.png"
    buffer = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(buffer, format="PNG")
    bomb.write_bytes(buffer.getvalue())
    result = add_images(database, [bomb])
    assert result.added == 0 and "megapixels" in result.refused[0]


def test_a_huge_image_in_a_small_file_is_refused_before_it_is_decoded(database, tmp_path, monkeypatch):
    """Issue 16, item 6: a 17000 x 17000 PNG of 1 MB (289 megapixels, under Pillow's own bomb limit) used to be
    decoded (1.1 GB) before the 150-megapixel refusal; the size in the header decides now."""
    from PIL import ImageFile

    path = tmp_path / "huge.png"
    Image.new("1", (17000, 17000)).save(path)
    assert path.stat().st_size < 2_000_000
    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size) or real_load(self))
    result = add_images(database, [str(path)])
    assert result.image_ids == [] and "17000x17000 is more than 150 megapixels" in result.summary()
    assert decoded == []

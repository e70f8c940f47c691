"""What comes over the wire, checked before the workbench uses it: the headless API's fields (app.api), the
review canvas's edits, the page's fields and the Draw tab's boxes (services.editing).

One function per concept, used by every entry that takes it; each returns the value as the workbench uses it
or raises WorkbenchError with a message that names the field and says what to send. The rules of numbers, ids
and boxes live in db.checks (the COCO import uses them too; db knows no services); this module adds the
client's concepts on top: ids and revisions, scores, counts, clicked points, box lists and the backbone
weights a client may name. Plain values only: no database, no model.
"""

from __future__ import annotations

from pathlib import Path

from db.checks import MAX_ID, MIN_BOX_SIDE, box_in_image, clipped_box, finite_number, is_number, strict_int
from db.errors import WorkbenchError, shown

MAX_POINTS = 1000  # clicked points in one list
MAX_LISTED = 10_000  # ids, boxes or instances in one list

__all__ = ["MAX_ID", "MIN_BOX_SIDE", "MAX_POINTS", "MAX_LISTED", "strict_id", "temporary_or_strict_id",
           "revision", "required_revision", "REVISION_NEEDED", "count", "fraction", "finite_number", "is_number", "listed", "box_in_image", "clipped_box",
           "point_in_image", "points_in_image", "backbone_weights", "WEIGHTS_FOLDER"]


def strict_id(value, what: str, *, text: bool = True) -> int:
    """An id (image, annotation, class, model version, training run): a JSON integer or a text of ASCII digits
    ("3" and 3; not 3.0, "1_0", "1e1", "٣", "８" or true), from 0 to MAX_ID. ``text`` False: an id inside a
    JSON object (an instance's "id"), which must be a JSON integer."""
    return strict_int(value, what, 0, MAX_ID, text=text)


def temporary_or_strict_id(value, what: str) -> int:
    """An instance id of the review canvas: an annotation id, or the negative temporary id the browser gave a
    new instance of the same batch (services.editing)."""
    return strict_int(value, what, -MAX_ID, MAX_ID)


def revision(value, what: str = "seen_revision") -> int | None:
    """The revision a client saw (its save is refused when the image changed since): a whole number as
    :func:`strict_id` takes it; None, "" or a negative number (-1): no revision check (None)."""
    if value is None or value == "":
        return None
    number = strict_int(value, what, -MAX_ID, MAX_ID)
    return None if number < 0 else number


REVISION_NEEDED = ("send the image's revision as seen_revision: the 'revision' of /instances (or /propose), or the "
                   "'saved_revision' of your last save of the image")


def required_revision(value, what: str = "seen_revision") -> int:
    """The revision a client read the image at, which an API write that replaces the image's annotations
    requires: missing or negative (the old -1, "no check") is refused, since such a save would overwrite whatever
    someone else saved meanwhile."""
    if value is None or value == "":
        raise WorkbenchError(f"{what} is missing: a save replaces the image's annotations; {REVISION_NEEDED}")
    number = strict_int(value, what, -MAX_ID, MAX_ID)
    if number < 0:
        raise WorkbenchError(f"{what} {number} (no check) is no longer accepted: it overwrote other people's "
                             f"saves; {REVISION_NEEDED}")
    return number


def count(value, what: str, maximum: int) -> int:
    """A count from a client (iterations, an image size, images to propose): a whole number from 0 to
    ``maximum``; None or "": 0 (the default)."""
    if value is None or value == "":
        return 0
    return strict_int(value, what, 0, maximum)


def fraction(value, what: str) -> float:
    """A finite number from 0 to 1 (a score, a threshold)."""
    number = finite_number(value, what)
    if not 0.0 <= number <= 1.0:
        raise WorkbenchError(f"{what} must be between 0 and 1, not {shown(value)}")
    return number


def listed(value, what: str, limit: int = MAX_LISTED, item: str = "values") -> list:
    """A list (or tuple) of at most ``limit`` items; None: an empty list. A text is not a list of ids."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or len(value) > limit:
        raise WorkbenchError(f"{what} must be a list of at most {limit} {item}, not {shown(value)}")
    return list(value)


def point_in_image(value, width: int, height: int, what: str) -> tuple[float, float]:
    """A clicked point [x, y] in the image's full-resolution pixels: finite, 0 <= x < width, 0 <= y < height."""
    if not (isinstance(value, (list, tuple)) and len(value) == 2):
        raise WorkbenchError(f"{what}: each point must be [x, y], not {shown(value)}")
    x, y = (finite_number(v, f"{what}: a coordinate") for v in value)
    if not (0 <= x < width and 0 <= y < height):
        raise WorkbenchError(f"{what}: the point {[x, y]} is outside the {width}x{height} image; send "
                             "full-resolution pixels")
    return x, y


def points_in_image(value, width: int, height: int, what: str) -> list[tuple[float, float]]:
    """Clicked points: a list of at most MAX_POINTS [x, y] (:func:`point_in_image`); None: none."""
    return [point_in_image(point, width, height, what)
            for point in listed(value, what, MAX_POINTS, "[x, y] points")]


WEIGHTS_FOLDER = "weights"  # <data dir>/weights/: the only backbone weights a client may name


def backbone_weights(value, data_dir: Path, default: str | None) -> str | None:
    """The backbone weights a client (the /retrain endpoint, the Train tab) asks for: empty (None): ``default``
    (the server's WORKBENCH_BACKBONE_WEIGHTS, else torchvision's ImageNet weights); "none": random
    initialisation; the server's default itself (the Train tab shows it); else a file in
    ``<data_dir>/weights/``, named relative to that folder (or by its full path), resolved: no "..", no link
    out of the folder. Anything else gets one message, whether or not such a file exists elsewhere (a client
    learns nothing about the server's other files)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    folder = Path(data_dir) / WEIGHTS_FOLDER
    refused = WorkbenchError(f"backbone_weights must be empty (the server's default), 'none', or the name of a "
                             f"weights file in the data folder's {WEIGHTS_FOLDER}/ folder ({folder}), not "
                             f"{shown(value, 80)}; copy the .pth file into that folder first")
    if not isinstance(value, str):
        raise refused
    text = value.strip()
    if text.lower() == "none":
        return "none"
    if default is not None and text == default:
        return default
    if "\x00" in text or ".." in Path(text).parts:
        raise refused
    root = folder.resolve()
    try:
        path = (folder / text).resolve()  # an absolute ``text`` replaces the folder: checked below like any other
        inside = path.is_relative_to(root) and path.is_file()
    except (OSError, ValueError, RuntimeError):  # a name too long, a loop of links
        inside = False
    if not inside:
        raise refused
    return str(path)

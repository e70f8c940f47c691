"""Numbers, ids and boxes that come from outside (a client, a COCO file), checked before anything uses them.

The COCO import uses these directly; ``services.wire`` builds the API's and the review canvas's checks on them
(db knows no services). Each check returns the value as the workbench uses it, or raises WorkbenchError with a
message that names the value (``what``) and says what to send.

Boxes are [x1, y1, x2, y2] in image pixels: finite numbers (not bools, not texts), x1 < x2 and y1 < y2 with each
side at least MIN_BOX_SIDE, and at most one image size outside the image (x in -width..2*width, y in
-height..2*height; polygons have the same limit, see db.masks). A box that becomes a mask (drawn boxes, the
model's or GrabCut's mask, box-only COCO annotations) is clipped to the image afterwards and must overlap it.
"""

from __future__ import annotations

import math
import re

from db.errors import WorkbenchError, shown

MAX_ID = 2**31 - 1  # ids and revisions are 32-bit integers in the database (PostgreSQL's INTEGER)
MIN_BOX_SIDE = 0.01  # pixels: a box narrower or lower than this is a slip of the hand (and no mask can be made)
_DIGITS = re.compile(r"-?[0-9]{1,12}")  # ASCII digits only: int() also reads "1_0", "٣" and "８" (not "1e1")


def is_number(value) -> bool:
    """A JSON number: an int or a float (not a bool; numpy's numbers count), finite or not."""
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    return type(value).__module__ == "numpy" and hasattr(value, "dtype") and value.dtype.kind in "iuf"


def is_integer(value) -> bool:
    """A JSON integer: an int (not a bool; numpy's integers count), not a float such as 3.0."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return type(value).__module__ == "numpy" and hasattr(value, "dtype") and value.dtype.kind in "iu"


def finite_number(value, what: str) -> float:
    """A finite number, else a WorkbenchError naming ``what``."""
    if not is_number(value):
        raise WorkbenchError(f"{what} must be a finite number, not {shown(value)}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond a float's range
        number = math.inf
    if not math.isfinite(number):
        raise WorkbenchError(f"{what} must be a finite number, not {shown(value)}")
    return number


def strict_int(value, what: str, minimum: int = 0, maximum: int = MAX_ID, *, text: bool = True) -> int:
    """A whole number from a client or a file: a JSON integer (not a bool, not a float such as 3.0) or, with
    ``text``, a text of ASCII digits ("3"; "-1" where ``minimum`` is negative), from ``minimum`` to ``maximum``;
    anything else (" 3", "1_0", "1e1", "٣", "８", 3.0, True, 2**40) is refused with a message naming ``what``.
    ``text`` False: a field of a JSON object, whose type the sender chose (the API's instances, a COCO file)."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif text and isinstance(value, str) and _DIGITS.fullmatch(value):
        number = int(value)
    else:
        said = 'an integer such as 3 or "3" (digits 0-9)' if text else "a JSON integer such as 3"
        raise WorkbenchError(f"{what} must be a whole number, not {shown(value)}; send {said}")
    if not minimum <= number <= maximum:
        raise WorkbenchError(f"{what} must be a whole number from {minimum} to {maximum}, not {shown(value)}")
    return number


def box_in_image(value, width: int, height: int, what: str) -> tuple[float, float, float, float]:
    """[x1, y1, x2, y2] (a list or tuple of 4 numbers) checked as the module says -> a tuple of floats; not
    clipped (see :func:`clipped_box`)."""
    if not (isinstance(value, (list, tuple)) and len(value) == 4):
        raise WorkbenchError(f"{what} must be [x1, y1, x2, y2] (4 numbers in image pixels), not {shown(value)}")
    box = tuple(finite_number(v, f"{what}: a box value") for v in value)
    x1, y1, x2, y2 = box
    if not (x2 - x1 >= MIN_BOX_SIDE and y2 - y1 >= MIN_BOX_SIDE):
        raise WorkbenchError(f"{what} {shown(list(value), 80)} has no area; send x1 < x2 and y1 < y2 (at least "
                             f"{MIN_BOX_SIDE} pixel apart)")
    if min(x1, x2) < -width or max(x1, x2) > 2 * width or min(y1, y2) < -height or max(y1, y2) > 2 * height:
        raise WorkbenchError(f"{what} {shown(list(value), 80)} is more than one image size outside the "
                             f"{width}x{height} image; send image pixels")
    return box


def clipped_box(value, width: int, height: int, what: str) -> tuple[float, float, float, float]:
    """A box that becomes a mask: :func:`box_in_image`, then clipped to the image, which it must overlap (by at
    least MIN_BOX_SIDE each way)."""
    x1, y1, x2, y2 = box_in_image(value, width, height, what)
    x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))
    if not (x2 - x1 >= MIN_BOX_SIDE and y2 - y1 >= MIN_BOX_SIDE):
        raise WorkbenchError(f"{what} {shown(list(value), 80)} does not overlap the {width}x{height} image; "
                             "draw it on the image")
    return x1, y1, x2, y2

"""What the page shows and how: table headers, colours of classes, which instances the review draws,
the texts of messages. Plain values only; the data comes from the services facade."""

from __future__ import annotations

import colorsys

from services.workbench import LOW_CONFIDENCE_TOP, VERSION_METRIC_COLUMNS, ConflictError, isolated

# user text (class and file names) among the page's words goes through isolated(): a right-to-left override
# in a name cannot flip the rest of the line (services' messages do the same; the review canvas uses <bdi>)

CATEGORY_HEADERS = ["id", "name", "train box-only", "train masks", "set"]  # accepted, non-crowd, train split
IMAGE_HEADERS = ["id", "file_name", "width", "height", "split", "annotations", "status"]
VERSION_HEADERS = ["version", "active", "name", "created", *(header for header, _, _ in VERSION_METRIC_COLUMNS), "run",
                   "proposals shown (threshold, per photo, precision, saving)"]
STATUS_FILTERS = ["all", "new", "proposed", "in review", "done"]
SET_LABELS = {"A": "A (masks)", "B": "B (boxes only)", None: "-"}  # a class's Mask^X set, as the Classes tab says it
GALLERY_LIMIT = 300
MAX_SHOWN = 1000  # instances drawn on the image at once (a model outputs at most 1000: mnc_core MAX_DETECTIONS)


def category_color(category_id: int) -> tuple[int, int, int]:
    """A class's colour; its red value is even (instance colours' is odd: see instance_colors)."""
    hue = (int(category_id) * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
    return int(r * 255) & ~1, int(g * 255), int(b * 255)


def instance_colors(annotation_ids: list[int]) -> dict[int, tuple[int, int, int]]:
    """A distinct colour per instance (odd red value, so never a class's colour, and no two alike): the
    Draw tab gives each existing box its instance's colour, and the box's colour, which the annotator
    sends back, says which annotation a moved box is (a new box gets its class's colour)."""
    out: dict[int, tuple[int, int, int]] = {}
    used: set[tuple[int, int, int]] = set()
    for annotation_id in annotation_ids:
        hue = (int(annotation_id) * 0.7548776662466927) % 1.0
        r, g, b = (int(v * 255) for v in colorsys.hsv_to_rgb(hue, 0.65, 0.9))
        color = (r | 1, g, b)
        while color in used:
            color = (color[0], color[1], (color[2] + 1) % 256)
        used.add(color)
        out[int(annotation_id)] = color
    return out


SHADES = (0.95, 0.72, 0.84, 0.6, 0.9, 0.66, 0.78)  # brightness steps of one class's instances on the review


def class_shades(rows: list[dict]) -> dict[int, tuple[int, int, int]]:
    """The review's colour per instance: its class's hue (a person drawn in the car's colour is a car: a wrong
    class shows), instances of one class told apart by brightness (their order by id), as CVAT and Label
    Studio colour by label."""
    out: dict[int, tuple[int, int, int]] = {}
    seen: dict[int, int] = {}
    for row in sorted(rows, key=lambda r: r["id"]):
        category_id = int(row["category_id"])
        place = seen.get(category_id, 0)
        seen[category_id] = place + 1
        hue = (category_id * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, 0.75, SHADES[place % len(SHADES)])
        out[int(row["id"])] = (int(r * 255), int(g * 255), int(b * 255))
    return out


def hex_color(category_id: int) -> str:
    return hex_of(category_color(category_id))


def hex_of(color: tuple[int, int, int]) -> str:
    """An (r, g, b) colour as CSS "#rrggbb"."""
    return "#%02x%02x%02x" % color


def shown_instances(rows: list[dict], review_threshold: float | None,
                    score_threshold: float) -> tuple[list[dict], set[int]]:
    """What the review draws: the accepted instances and the proposals a person is shown: with
    ``review_threshold`` None those the model's thresholds show (the rows' "shown", services.payoff); else those
    scoring at least ``review_threshold`` and, when no proposal reaches it, the best LOW_CONFIDENCE_TOP instead,
    marked low confidence (their ids, the second value), as are stored guesses below ``score_threshold``.
    Accepted first, then by score; at most MAX_SHOWN."""
    proposed = sorted((r for r in rows if r["review_state"] == "proposed"), key=lambda r: -(r["score"] or 0.0))
    if review_threshold is None:
        guesses, low = [r for r in proposed if r.get("shown", True)], set()
    else:
        above = [r for r in proposed if (r["score"] or 0.0) >= review_threshold]
        guesses = above or proposed[:LOW_CONFIDENCE_TOP]
        low = {r["id"] for r in guesses if not above or (r["score"] is not None and r["score"] < score_threshold)}
    shown = [r for r in rows if r["review_state"] == "accepted"] + guesses
    shown.sort(key=lambda r: (r["review_state"] != "accepted", -(r["score"] or 0.0)))
    return shown[:MAX_SHOWN], low


def hidden_message(rows: list[dict], policies: dict) -> str:
    """Says how many proposals the model's thresholds hide, and why (empty when none is hidden)."""
    hidden = [r for r in rows if r["review_state"] == "proposed" and not r.get("shown", True)]
    if not hidden:
        return ""
    none_yet = any(p.get("all", {}).get("source") == "none" for p in policies.values())
    why = ("the model has no record yet of whether its proposals pay (photos done with it, or a val split, give "
           "one)" if none_yet else "they are under their class's threshold or over its number per photo")
    return (f"{len(hidden)} proposal(s) hidden: {why}. Untick *Model's thresholds* to see them with the review "
            "threshold.")


def proposal_message(result, score_threshold: float) -> str:
    """What a proposal run (services.proposals.ProposalResult) says to the person."""
    if result.low_confidence:
        return (f"No instance reached the score threshold {score_threshold:.2f}: the model's {result.added} best "
                "guess(es) were stored as low-confidence proposals.")
    return f"The model proposed {result.added} instance(s) (scores ≥ {score_threshold:.2f} are kept)."


def error_text(exc: Exception) -> str:
    if isinstance(exc, ConflictError):
        return (f"⚠️ **Conflict:** {exc} The image now shows the other person's version; your version is "
                "kept and can be brought back with *Recover my lost version*.")
    return f"⚠️ {exc}"


def overview_text(summary, status_counts: dict[str, int]) -> str:
    return (f"**{summary.images} images** ({summary.train_images} train, {summary.val_images} val; "
            + ", ".join(f"{v} {k}" for k, v in status_counts.items()) + ") · "
            f"**{summary.annotations} annotations** accepted, {summary.proposed} proposed · "
            f"**{len(summary.categories)} categories** · active model: {summary.active_model or 'none yet'}")


def category_rows(summary) -> list[list]:
    return [[c.id, c.name, c.boxes, c.masks, SET_LABELS[c.category_set]] for c in summary.categories]


def progress_bar_html(fraction: float) -> str:
    return (f"<div style='background:#ddd;border-radius:4px;height:14px;width:100%'><div id='train-bar' "
            f"style='background:#3b82f6;height:14px;border-radius:4px;width:{fraction * 100:.1f}%'></div></div>")


"""Model proposals stored in the database (masks for boxes that a person drew: services.box_masks).

``propose`` runs a model version's predictor on one image and replaces the image's
still-``proposed`` model annotations by the new ones (source "model", the version's id,
the score); everything a person accepted, rejected or drew stays as it is. Accepting a
proposal (``db.annotations.set_review_state``) makes it a label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from db import queries
from db.annotations import InstanceData, Seen, get_annotations, save_annotations
from db.engine import Database
from db.imagestore import ImageStore, load_rgb

DEFAULT_SCORE_THRESHOLD = 0.05  # proposals below this score are not stored ...
LOW_CONFIDENCE_TOP = 3  # ... except, when none reaches it, the model's best few guesses (marked low confidence)
LOW_CONFIDENCE_FLOOR = 0.005  # the lowest score such a guess may have
MAX_BOXES = 20  # boxes that get a mask (the model's or GrabCut's) in one call, and GrabCut or model edits (box,
# refine, propose) in one batch of the review canvas: with GrabCut on at most partial_sup.grabcut.MAX_PIXELS each,
# one request costs at most about 20 x 0.6 s of CPU


@dataclass
class ProposalResult:
    revision: int
    added: int  # new proposals stored
    replaced: int  # older proposals removed
    skipped: int  # instances of classes that no longer exist, or with empty masks
    low_confidence: int = 0  # of the added: best guesses below the minimum score (none reached it)


def image_rgb(db: Database, image_id: int) -> np.ndarray:
    return load_rgb(ImageStore(db.data_dir).absolute(queries.image_info(db, image_id)["stored_path"]))


def propose(db: Database, image_id: int, predictor, version_id: int | None, *, score_threshold: float | None = None,
            seen_revision: int | None = None, image: np.ndarray | None = None, user: str | None = None,
            instances: list | None = None) -> ProposalResult:
    """Predict on the image and store the instances as proposals (see the module's doc).

    Instances scoring below ``score_threshold`` are not stored, unless none reaches it: then the
    ``LOW_CONFIDENCE_TOP`` best ones above ``LOW_CONFIDENCE_FLOOR`` are (a young model still shows its
    best guesses; the review marks them as low confidence by their score).

    ``seen_revision``: the revision the caller saw (ConflictError when someone changed the
    image since); ``instances``: predictions already made (skips running the model), sorted by score
    and down to LOW_CONFIDENCE_FLOOR where the fallback should be possible."""
    threshold = DEFAULT_SCORE_THRESHOLD if score_threshold is None else float(score_threshold)
    revision, rows = get_annotations(db, image_id, decode_masks=False)
    if seen_revision is None:
        seen_revision = revision
    else:  # the caller's view, with the rows this save is computed from (db.annotations.Seen)
        seen_revision = (seen_revision if isinstance(seen_revision, Seen) else Seen(int(seen_revision))).reading(revision)
    if instances is None:
        image = image_rgb(db, image_id) if image is None else image
        instances = predictor(image, score_threshold=min(threshold, LOW_CONFIDENCE_FLOOR))
    known = set(queries.category_names(db))
    keep = [row for row in rows if not (row["review_state"] == "proposed" and row["source"] == "model")]
    usable = [inst for inst in instances if inst.category_id in known and inst.score >= LOW_CONFIDENCE_FLOOR]
    confident = [inst for inst in usable if inst.score >= threshold]
    chosen = confident or sorted(usable, key=lambda inst: -inst.score)[:LOW_CONFIDENCE_TOP]
    new, skipped = [], len(instances) - len(chosen)
    for inst in chosen:
        mask = np.asarray(inst.mask, bool)  # read once: it may be computed on access
        if not mask.any():
            skipped += 1
            continue
        new.append(InstanceData(category_id=int(inst.category_id), box=tuple(float(v) for v in inst.box),
                                mask=mask, source="model", review_state="proposed",
                                score=float(inst.score), model_version_id=version_id))
    revision = save_annotations(db, image_id, [InstanceData.from_row(r) for r in keep] + new,
                                seen_revision=seen_revision, user=user, proposing=True)
    return ProposalResult(revision=revision, added=len(new), replaced=len(rows) - len(keep), skipped=skipped,
                          low_confidence=0 if confident else len(new))


def uncertainty(scores: list[float]) -> float:
    """How unsure a model is about a photo: the sum over its proposals of the binary entropy (bits) of their
    scores. A proposal near 0.5 counts most (a decision a person has to make, and what the model learns most
    from); sure ones (near 1) add little; a photo with many unsure instances outranks one with a single one."""
    total = 0.0
    for score in scores:
        p = min(max(float(score), 1e-6), 1 - 1e-6)
        total -= p * np.log2(p) + (1 - p) * np.log2(1 - p)
    return round(total, 6)

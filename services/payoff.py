"""Proposals that pay: for each model version and class, the score above which showing a proposal is expected
to save labelling time, and how many per photo the version's record supports.

A record is one proposal whose photo was reviewed: its score, its rank in the photo by score, and what it was
worth: ``match_iou``, its best mask IoU with the photo's final labels, and whether that label has its class.
Two sources give records: the val split's labelled photos at the end of training (services.evaluation) and
the photos people marked done with the version (db.fates.record_done: shown and hidden proposals alike).

Showing a proposal that finds an instance (match IoU >= USEFUL_IOU) saves a box and costs a verify (and a class
change when its class is wrong); showing one that finds nothing costs a reject. The threshold is the score
that maximises the summed value of the records above it; none when no score gives a positive sum. The cap is
the deepest rank in a photo whose records above the threshold still sum to a positive value."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass

USEFUL_IOU = 0.5  # a proposal that finds an instance: kept and refined like a hand box
MIN_RECORDS = 20  # a class's own record counts from this many proposals ...
MIN_PHOTOS = 3  # ... on this many photos; below, the version's record over all classes stands in


@dataclass(frozen=True)
class CostModel:
    """Seconds per action (../shared/notes/labelling_cost_facts.md): a box by extreme clicking 7 s (Papadopoulos et
    al. 2017), the harder case for proposals than a traditional 34.5 s box."""
    box_s: float = 7.0
    verify_s: float = 1.0
    reject_s: float = 1.0
    class_change_s: float = 1.0
    click_s: float = 1.5

    def value(self, match_iou: float | None, right_class: bool) -> float:
        """Seconds saved by showing one proposal (negative: lost)."""
        if match_iou is not None and match_iou >= USEFUL_IOU:
            return self.box_s - self.verify_s - (0.0 if right_class else self.class_change_s)
        return -self.reject_s


@dataclass(frozen=True)
class Record:
    score: float
    rank: int | None  # 1: the photo's best-scoring proposal
    match_iou: float | None
    right_class: bool
    photo: object  # any key of the photo (image id, val file)


@dataclass(frozen=True)
class Policy:
    threshold: float | None  # show proposals scoring at least this; None: show none
    cap: int  # at most this many per photo (the best scores)
    precision: float | None  # the share of useful proposals among those shown, in the record
    saving_s: float  # expected seconds saved per photo by showing them
    records: int
    photos: int
    source: str  # "val", "record" (photos done with the version), "val+record", "none"

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Policy":
        return cls(**{name: data.get(name) for name in cls.__dataclass_fields__})

    @property
    def shows_any(self) -> bool:
        return self.threshold is not None and self.cap > 0


NO_RECORD = Policy(threshold=None, cap=0, precision=None, saving_s=0.0, records=0, photos=0, source="none")


def choose_policy(records: list[Record], cost: CostModel = CostModel(), source: str = "record") -> Policy:
    """The threshold and cap that save the most in the record (see the module's doc)."""
    photos = len({r.photo for r in records})
    if not records:
        return NO_RECORD
    ordered = sorted(records, key=lambda r: -r.score)
    total, best_total, threshold, shown = 0.0, 0.0, None, 0
    for index, record in enumerate(ordered):
        total += cost.value(record.match_iou, record.right_class)
        last_of_score = index + 1 == len(ordered) or ordered[index + 1].score < record.score
        if last_of_score and total > best_total:  # a threshold takes all records of the same score
            best_total, threshold, shown = total, record.score, index + 1
    if threshold is None:
        return Policy(None, 0, None, 0.0, len(records), photos, source)
    above = ordered[:shown]
    by_rank = defaultdict(float)
    for record in above:
        by_rank[record.rank or 1] += cost.value(record.match_iou, record.right_class)
    cap = 0
    for rank in sorted(by_rank):
        if by_rank[rank] <= 0:
            break
        cap = rank
    cap = max(1, cap)
    kept = [r for r in above if (r.rank or 1) <= cap]
    saving = sum(cost.value(r.match_iou, r.right_class) for r in kept)
    if not kept or saving <= 0:  # what pays lies deeper in the photos than the first ranks: nothing to show
        return Policy(None, 0, None, 0.0, len(records), photos, source)
    useful = sum(1 for r in kept if r.match_iou is not None and r.match_iou >= USEFUL_IOU)
    return Policy(threshold=round(threshold, 4), cap=cap, precision=round(useful / len(kept), 3),
                  saving_s=round(saving / max(photos, 1), 2), records=len(records), photos=photos, source=source)


def enough(records: list[Record]) -> bool:
    return len(records) >= MIN_RECORDS and len({r.photo for r in records}) >= MIN_PHOTOS


def policies(records: list[tuple[int, Record]], cost: CostModel = CostModel(), source: str = "record"
             ) -> dict:
    """{category_id: Policy, "all": Policy} from (category_id, Record) pairs: a class with too small a record of
    its own gets the version's policy over all classes (its source says so)."""
    by_class = defaultdict(list)
    for category_id, record in records:
        by_class[category_id].append(record)
    everything = [record for _, record in records]
    overall = choose_policy(everything, cost, source) if enough(everything) else NO_RECORD
    out: dict = {"all": overall}
    for category_id, group in by_class.items():
        out[category_id] = choose_policy(group, cost, source) if enough(group) else overall
    return out


def shown_ids(rows: list[dict], policy_of) -> set[int]:
    """The proposals of one photo a person is shown: those scoring at least their class's threshold, the best
    ``cap`` of each class. ``policy_of(category_id) -> Policy``."""
    by_class = defaultdict(list)
    for row in rows:
        if row["review_state"] == "proposed":
            by_class[row["category_id"]].append(row)
    shown = set()
    for category_id, group in by_class.items():
        policy = policy_of(category_id)
        if not policy.shows_any:
            continue
        above = sorted((r for r in group if (r["score"] or 0.0) >= policy.threshold), key=lambda r: -(r["score"] or 0))
        shown.update(r["id"] for r in above[:policy.cap])
    return shown


def describe(policy: Policy) -> str:
    """One line for the versions table."""
    if policy.source == "none":
        return "no record yet: proposals hidden until photos are done (the review threshold shows them)"
    if policy.threshold is None:
        return f"proposals do not pay yet ({policy.records} in the record, {policy.source}): hidden"
    return (f"≥ {policy.threshold:.2f}, ≤ {policy.cap}/photo: precision {policy.precision:.0%}, "
            f"saves {policy.saving_s:.1f} s/photo ({policy.records} in the record, {policy.source})")

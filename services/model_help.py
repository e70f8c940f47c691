""""Model help": how much each model version helped the people labelling, from what became of its proposals
and of the instances added by hand (db.fates), per version and per class.

Per version (proposals of that version; hand-made instances and visits while it was the active one; "no
model" before any):
- final: accepted instances now: proposals accepted unchanged or edited, plus those added by hand;
- unchanged_share: of the final, proposals accepted unchanged; hand_share: added by hand;
- edited_iou: mean IoU between an edited proposal's mask and its final mask;
- rejected_per_image: rejected proposals per image the version proposed on (reviewed ones);
- hidden: proposals under the version's thresholds (services.payoff), never shown: not charged;
- seconds_per_instance: active time of the visits (db.fates.record_visit) per final instance.
"""

from __future__ import annotations

from collections import defaultdict

from db import fates
from db.engine import Database

COLUMNS = ("version", "class", "final", "unchanged", "edited", "hand", "rejected", "hidden", "deleted", "images",
           "unchanged_share", "hand_share", "edited_iou", "rejected_per_image", "active_seconds",
           "seconds_per_instance")


def _figures(rows: list[dict], seconds: float | None) -> dict:
    count = defaultdict(int)
    ious, images = [], set()
    for r in rows:
        if r["kind"] == "hand":
            count["hand"] += r["fate"] == "kept"
            count["deleted"] += r["fate"] == "deleted"
            continue
        if r["fate"] in ("proposed", "replaced", "hidden"):  # never shown: not charged (hidden counted apart)
            count["hidden"] += r["fate"] == "hidden"
            continue
        count[r["fate"]] += 1
        images.add(r["image_id"])
        if r["fate"] == "edited" and r["iou"] is not None:
            ious.append(r["iou"])
    final = count["accepted"] + count["edited"] + count["hand"]
    share = (lambda n: round(n / final, 3)) if final else (lambda n: None)
    return {"final": final, "unchanged": count["accepted"], "edited": count["edited"], "hand": count["hand"],
            "rejected": count["rejected"], "hidden": count["hidden"], "deleted": count["deleted"],
            "images": len(images),
            "unchanged_share": share(count["accepted"]), "hand_share": share(count["hand"]),
            "edited_iou": round(sum(ious) / len(ious), 3) if ious else None,
            "rejected_per_image": round(count["rejected"] / len(images), 2) if images else None,
            "active_seconds": None if seconds is None else round(seconds, 1),
            "seconds_per_instance": round(seconds / final, 1) if seconds is not None and final else None}


def model_help(db: Database, class_names: dict[int, str], version_names: dict[int, str]) -> dict[str, list[dict]]:
    """{"versions": one dict of COLUMNS per model version (oldest first; "no model" first when there is work
    from before any), "classes": the same per version and class}."""
    rows, visits = fates.fate_rows(db), fates.visit_rows(db)
    seconds = defaultdict(float)
    for v in visits:
        seconds[v["model_version_id"]] += v["active_seconds"]
    by_version, by_class = defaultdict(list), defaultdict(list)
    for r in rows:
        by_version[r["model_version_id"]].append(r)
        kept = r["fate"] in ("accepted", "edited", "kept")
        by_class[(r["model_version_id"], r["final_category_id"] if kept else r["category_id"])].append(r)
    order = sorted(set(by_version) | set(seconds), key=lambda v: -1 if v is None else v)

    def name(version):
        return "no model" if version is None else version_names.get(version, f"v{version}")

    versions = [{"version": name(v), "version_id": v, "class": "all",
                 **_figures(by_version.get(v, []), seconds[v] if v in seconds else None)} for v in order]
    classes = [{"version": name(v), "version_id": v, "class": class_names.get(c, str(c)), **_figures(group, None)}
               for (v, c), group in sorted(by_class.items(), key=lambda item: (-1 if item[0][0] is None
                                                                               else item[0][0], item[0][1]))]
    return {"versions": versions, "classes": classes}

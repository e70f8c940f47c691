"""A model version's metrics as people read them (the UI's versions table, `launch.py models`)."""

from __future__ import annotations

# A model version's metrics as the UI and `launch.py models` show them: (header, keys in order of
# preference, decimals). Versions before the validation metrics stored the training loss (mean total
# loss of the last 20 iterations) as ``final_loss``; newer ones store it as ``train_loss``.
VERSION_METRIC_COLUMNS: tuple[tuple[str, tuple[str, ...], int | None], ...] = (
    ("train loss (last 20 it)", ("train_loss", "final_loss"), 4),
    ("mask AP A", ("mask_AP_A",), 3),
    ("mask AP B", ("mask_AP_B",), 3),
    ("box AP", ("box_AP",), 3),
    ("val images", ("val_images",), None),
    ("train images", ("train_images",), None),
)


def version_metrics(metrics: dict | None) -> dict[str, str]:
    """header -> text of each of ``VERSION_METRIC_COLUMNS``; "-" where the version has no such metric
    (not measured, e.g. no reviewed val image or no val mask of a set-B class)."""
    metrics = metrics or {}
    out = {}
    for header, keys, decimals in VERSION_METRIC_COLUMNS:
        value = next((metrics[k] for k in keys if metrics.get(k) is not None), None)
        if value is None:
            out[header] = "-"
        elif decimals is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
            out[header] = f"{float(value):.{decimals}f}"
        else:
            out[header] = str(value)
    return out

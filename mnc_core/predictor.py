"""Predictor: numpy RGB image in, list of `Instance` (full-size boolean masks) out."""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from .checkpoint import load_checkpoint
from .config import MNCConfig
from .model import MNC
from .preprocess import batch_images, image_to_tensor, resized_shape
from .roi_warp import check_boxes


@dataclass
class Instance:
    category_id: int
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in original-image pixels
    mask: np.ndarray                         # (H, W) bool, full original image


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Predictor:
    def __init__(self, model: MNC, config: MNCConfig, categories: list[tuple[int, str]],
                 device: str | torch.device | None = None) -> None:
        if len(categories) != model.num_classes:
            raise ValueError(f"{len(categories)} categories for a model with {model.num_classes} classes")
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device).eval()
        self.config = config
        self.categories = [(int(c), str(n)) for c, n in categories]

    @classmethod
    def from_checkpoint(cls, path, device=None, final_mask_head=None) -> "Predictor":
        """final_mask_head: see `load_checkpoint` (models with e.g. a Mask^X head)."""
        dev = torch.device(device) if device is not None else default_device()
        model, config, categories, _ = load_checkpoint(path, device=dev, final_mask_head=final_mask_head)
        return cls(model, config, categories, dev)

    def __call__(self, image: np.ndarray, score_threshold: float | None = None) -> list[Instance]:
        return self.predict_batch([image], score_threshold)[0]

    @torch.no_grad()
    def masks_for_boxes(self, image: np.ndarray, boxes, category_ids, soft: bool = False) -> list[np.ndarray]:
        """(H, W) bool masks of the objects in `boxes` ((K, 4) x1, y1, x2, y2 in image pixels) of the
        given categories (ids the model knows): the model's mask for exactly that box and class.
        A mask is empty where the model sees no object in its box. ``soft``: the mask head's probabilities
        instead, (H, W) float32 in [0, 1] resized (bilinear) into the box, 0 outside it."""
        c = self.config
        tensor, (h, w), (H, W) = self._prepare(image)
        label_of = {cid: i + 1 for i, (cid, _) in enumerate(self.categories)}
        unknown = [int(cid) for cid in category_ids if int(cid) not in label_of]
        if unknown:
            raise ValueError(f"the model does not know categories {sorted(set(unknown))}")
        box_array = np.asarray(boxes, np.float64).reshape(-1, 4)
        if box_array.shape[0] == 0:
            return []
        # refused here, not in torchvision's C code (mnc_core.roi_warp): not finite, no area, or beyond float32
        check_boxes(torch.from_numpy(box_array), "masks_for_boxes", degenerate=True)
        scale = np.array([w / W, h / H, w / W, h / H], np.float64)
        with np.errstate(over="ignore"):  # 1e39 becomes inf in float32: refused just below
            scaled = (box_array * scale).astype(np.float32)
        check_boxes(torch.from_numpy(scaled), "masks_for_boxes at the model's scale (float32)", degenerate=True)
        rois = torch.from_numpy(scaled).to(self.device)
        labels = torch.tensor([label_of[int(cid)] for cid in category_ids], device=self.device)
        batch = batch_images([tensor], c.size_divisibility)
        probs = self.model.masks_for_boxes(batch, [(h, w)], [rois], [labels])[0].float()  # (K, m, m)
        out = []
        for prob, (x1, y1, x2, y2) in zip(probs, box_array.astype(np.float32)):  # pasted as before (float32)
            full = np.zeros((H, W), np.float32 if soft else bool)
            xa, ya = max(0, int(np.floor(x1))), max(0, int(np.floor(y1)))
            xb, yb = min(W, max(xa + 1, int(np.ceil(x2)))), min(H, max(ya + 1, int(np.ceil(y2))))
            if xb > xa and yb > ya:
                pasted = torch.nn.functional.interpolate(prob[None, None], size=(yb - ya, xb - xa), mode="bilinear",
                                                         align_corners=False)[0, 0]
                full[ya:yb, xa:xb] = (pasted if soft else pasted >= c.mask_thresh).cpu().numpy()
            out.append(full)
        return out

    def _prepare(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
        """RGB uint8 (H, W, 3) (or gray (H, W)) -> normalised tensor at the model's scale, (h, w), (H, W)."""
        c = self.config
        im = np.asarray(image)
        if im.ndim == 2:
            im = np.repeat(im[:, :, None], 3, axis=2)
        if im.ndim != 3 or im.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB image, got shape {im.shape}")
        if im.dtype != np.uint8:
            raise ValueError(f"expected a uint8 image, got {im.dtype}")
        H, W = im.shape[:2]
        h, w, _ = resized_shape(H, W, c.min_size, c.max_size)
        return image_to_tensor(im, (h, w), c.pixel_mean, c.pixel_std, self.device), (h, w), (H, W)

    @torch.no_grad()
    def predict_batch(self, images: list[np.ndarray], score_threshold: float | None = None) -> list[list[Instance]]:
        if not images:
            return []
        c = self.config
        tensors, sizes, originals = [], [], []
        for im in images:
            tensor, size, original = self._prepare(im)
            tensors.append(tensor)
            sizes.append(size)
            originals.append(original)
        batch = batch_images(tensors, c.size_divisibility)
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else nullcontext()
        with amp:
            dets = self.model.detect(batch, sizes, originals, score_threshold=score_threshold)
        out = []
        for d in dets:
            boxes = d["boxes"].float().cpu().numpy()
            scores = d["scores"].float().cpu().numpy()
            labels = d["labels"].cpu().numpy()
            masks = d["masks"].cpu().numpy()
            order = np.argsort(-scores, kind="stable")
            out.append([Instance(category_id=self.categories[int(labels[i]) - 1][0], score=float(scores[i]),
                                 box=tuple(float(v) for v in boxes[i]), mask=masks[i]) for i in order])
        return out

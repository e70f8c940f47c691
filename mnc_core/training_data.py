"""The training input pipeline: which image is drawn when, and how it becomes network input and targets.

- `draw_batches` decides, from the seed alone, every draw of a training run: the image (a seeded
  permutation per epoch), its scale (`config.scale_jitter`: multipliers of the short and long side
  limits), its horizontal flip (`config.hflip_prob`) and its photometric jitter (`config.photometric_jitter`).
  Every process of a distributed run computes the same global batches and takes its slice, so the run
  depends on the seed and the global batch size, not on the number of data-loading workers.
- `TrainingInputs` turns a draw into a `TrainingInput` (normalised image tensor and `ImageTargets` at the
  draw's scale). It is a map-style `torch.utils.data.Dataset` indexed by draws, so the same code runs in
  the training process (`num_workers=0`) or in `DataLoader` worker processes: JPEG decoding, resizing,
  mask decoding and target building then happen off the training thread.
- `training_loader` wires both into a `DataLoader` (one batch of `TrainingInput`s per iteration).

Crowd regions (`Sample.iscrowd`) do not become objects: their boxes go to `ImageTargets.crowd_boxes`,
which the RPN and the RoI sampler use to ignore anchors and RoIs inside them (targets.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms.v2 import functional as TF

from .config import MNCConfig
from .data import InstanceDataset, Sample, validate_sample
from .preprocess import normalise, resized_shape, resize_image
from .targets import ImageTargets


@dataclass(frozen=True)
class Draw:
    """One image of one training iteration: dataset index, training scale, flip, photometric jitter.
    `key` names the network input it makes (a frozen-feature cache may reuse it)."""
    index: int
    short_side: int
    max_side: int
    flip: bool
    jitter_seed: int = 0  # 0: no photometric jitter

    @property
    def key(self) -> tuple[int, int, int, bool, int]:
        return (self.index, self.short_side, self.max_side, self.flip, self.jitter_seed)


@dataclass
class TrainingInput:
    image: Tensor           # (3, h, w) float32, normalised
    size: tuple[int, int]   # (h, w)
    targets: ImageTargets   # at the image's scale
    key: tuple              # Draw.key

    def to(self, device: torch.device, non_blocking: bool = False) -> "TrainingInput":
        t = self.targets
        moved = ImageTargets(*(getattr(t, name).to(device, non_blocking=non_blocking) for name in ImageTargets.FIELDS))
        return TrainingInput(self.image.to(device, non_blocking=non_blocking), self.size, moved, self.key)

    def pin_memory(self) -> "TrainingInput":  # DataLoader(pin_memory=True) calls this
        t = self.targets
        return TrainingInput(self.image.pin_memory(), self.size,
                             ImageTargets(*(getattr(t, name).pin_memory() for name in ImageTargets.FIELDS)), self.key)


def training_scales(config: MNCConfig) -> list[tuple[int, int]]:
    """(short side, long side cap) of each training scale: `config.scale_jitter` multiplies both limits."""
    return [(max(1, int(round(config.min_size * f))), max(1, int(round(config.max_size * f))))
            for f in config.scale_jitter]


def _stable_seed(*values: int) -> int:
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1)[0]) or 1


def draw_batches(num_images: int, config: MNCConfig, *, seed: int, iterations: int, global_batch: int,
                 reuse_jitter: bool = False) -> list[list[Draw]]:
    """The global batch of every iteration, from the seed alone (see the module's doc).

    reuse_jitter: the photometric jitter of a draw depends only on (seed, image, scale, flip) instead of
    being drawn anew, so the number of distinct inputs stays bounded and a frozen-feature cache can hit
    (heads mode); otherwise every draw gets its own jitter."""
    if num_images < 1:
        raise ValueError("the dataset is empty")
    rng = np.random.default_rng(seed)
    scales = training_scales(config)
    order: list[int] = []
    batches: list[list[Draw]] = []
    for _ in range(iterations):
        batch = []
        for _ in range(global_batch):
            if not order:
                order = list(rng.permutation(num_images))
            index = int(order.pop())
            flip = bool(rng.random() < config.hflip_prob)
            short, cap = scales[int(rng.integers(len(scales)))] if len(scales) > 1 else scales[0]
            jitter = 0
            if config.photometric_jitter > 0:
                drawn = int(rng.integers(1, 2**31 - 1))
                jitter = _stable_seed(seed, index, short, int(flip)) if reuse_jitter else drawn
            batch.append(Draw(index, short, cap, flip, jitter))
        batches.append(batch)
    return batches


def photometric_jitter(image: Tensor, strength: float, seed: int) -> Tensor:
    """(3, h, w) float RGB in [0, 1] -> brightness, contrast and saturation each scaled by a factor drawn
    uniformly from [1 - strength, 1 + strength] with the generator of `seed` (torchvision's ColorJitter
    operations, in that order)."""
    rng = np.random.default_rng(seed)
    brightness, contrast, saturation = rng.uniform(1.0 - strength, 1.0 + strength, size=3)
    image = TF.adjust_brightness(image, float(brightness))
    image = TF.adjust_contrast(image, float(contrast))
    return TF.adjust_saturation(image, float(saturation)).clamp_(0.0, 1.0)


def prepare_sample(sample: Sample, cat_to_label: dict[int, int], config: MNCConfig, flip: bool,
                   device: torch.device | str = "cpu", *, short_side: int | None = None, max_side: int | None = None,
                   jitter_seed: int = 0) -> tuple[Tensor, tuple[int, int], ImageTargets]:
    """Sample -> normalised (3, h, w) image at the training scale (default: config.min_size / max_size)
    and its targets at that scale (crowd regions as `crowd_boxes`, not as objects)."""
    validate_sample(sample)
    device = torch.device(device)
    H, W = sample.image.shape[:2]
    short_side = config.min_size if short_side is None else short_side
    max_side = config.max_size if max_side is None else max_side
    h, w, _ = resized_shape(H, W, short_side, max_side)
    sx, sy = w / W, h / H
    image = resize_image(sample.image, (h, w), device)  # float [0, 1]
    if jitter_seed:
        image = photometric_jitter(image, config.photometric_jitter, jitter_seed)
    image = normalise(image, config.pixel_mean, config.pixel_std)
    boxes = torch.as_tensor(np.asarray(sample.boxes, dtype=np.float32), device=device).reshape(-1, 4)
    boxes = boxes * torch.tensor([sx, sy, sx, sy], device=device)
    crowd_flags = sample.crowd_flags()
    crowd = torch.as_tensor(crowd_flags, device=device)
    try:  # a crowd region's class does not matter (and need not be one of the dataset's)
        labels = torch.tensor([0 if iscrowd else cat_to_label[int(c)] for c, iscrowd in zip(sample.category_ids, crowd_flags)],
                              dtype=torch.long, device=device)
    except KeyError as e:
        raise ValueError(f"image {sample.image_id}: category id {e.args[0]} is not in dataset.categories") from None
    has_mask = torch.as_tensor(np.asarray(sample.has_mask, dtype=bool), device=device).reshape(-1) & ~crowd
    objects = torch.where(~crowd)[0]
    if objects.numel():
        m = torch.as_tensor(np.asarray(sample.masks)[objects.cpu().numpy()], dtype=torch.bool, device=device)
        m = m & has_mask[objects, None, None]
        masks = (F.interpolate(m[:, None].float(), size=(h, w), mode="bilinear", align_corners=False)[:, 0] >= 0.5)
        masks = masks.to(torch.uint8)
    else:
        masks = torch.zeros((0, h, w), dtype=torch.uint8, device=device)
    if flip:
        image = image.flip(-1)
        masks = masks.flip(-1)
        boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    ok = ((boxes[:, 2] - boxes[:, 0]) >= 1) & ((boxes[:, 3] - boxes[:, 1]) >= 1)
    keep = objects[ok[objects]]
    keep_masks = ok[objects]
    crowd_boxes = boxes[crowd & ok]
    targets = ImageTargets(boxes=boxes[keep], labels=labels[keep], masks=masks[keep_masks],
                           has_mask=has_mask[keep], crowd_boxes=crowd_boxes)
    return image, (h, w), targets


class TrainingInputs(Dataset):
    """Draw -> TrainingInput, reading the sample from an InstanceDataset (map-style, indexed by draws)."""

    def __init__(self, dataset: InstanceDataset, config: MNCConfig, cat_to_label: dict[int, int]) -> None:
        self.dataset = dataset
        self.config = config
        self.cat_to_label = dict(cat_to_label)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, draw: Draw) -> TrainingInput:
        image, size, targets = prepare_sample(self.dataset[draw.index], self.cat_to_label, self.config, draw.flip,
                                              short_side=draw.short_side, max_side=draw.max_side,
                                              jitter_seed=draw.jitter_seed)
        return TrainingInput(image, size, targets, draw.key)


class _LocalBatches(Sampler):
    """Yields this process's slice of each global batch."""

    def __init__(self, batches: list[list[Draw]], rank: int, per_process: int) -> None:
        self.batches = batches
        self.part = slice(rank * per_process, (rank + 1) * per_process)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[Draw]]:
        for batch in self.batches:
            yield batch[self.part]


def _as_list(batch: list[TrainingInput]) -> list[TrainingInput]:
    return batch


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)  # a worker resizes one image at a time; the training process keeps the cores


def training_loader(inputs: TrainingInputs, batches: list[list[Draw]], *, rank: int, per_process: int,
                    num_workers: int, pin_memory: bool, seed: int = 0) -> DataLoader:
    """A DataLoader that yields, per iteration, this process's list of TrainingInputs (in draw order).
    num_workers 0: in the training process; otherwise worker processes prepare the next batches. Its own
    generator keeps the global torch RNG (RoI sampling) the same with and without workers."""
    return DataLoader(inputs, batch_sampler=_LocalBatches(batches, rank, per_process), num_workers=num_workers,
                      collate_fn=_as_list, pin_memory=pin_memory, worker_init_fn=_worker_init if num_workers else None,
                      prefetch_factor=2 if num_workers else None, persistent_workers=False,
                      generator=torch.Generator().manual_seed(seed))

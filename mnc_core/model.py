"""MNC: backbone -> RPN (stage 1) -> mask (stage 2) -> categorise (stage 3) [-> stages 4-5 with shared weights]."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.ops.poolers import LevelMapper

from .backbone import Backbone, build_backbone
from .config import MNCConfig
from .heads import ClassifyHead, MaskHead
from .losses import box_regression_loss, classification_loss, mask_loss, total_loss
from .postprocess import postprocess_image
from .roi_warp import check_boxes, multilevel_roi_warp_pooled
from .rpn import RegionProposalNetwork, clip_gradient
from .targets import ImageTargets, inside_crowd, mask_iou_in_roi, mask_targets, match_rois, sample_rois


class MNC(nn.Module):
    """Multi-task Network Cascade.

    final_mask_head (optional): a module called as
      head(roi_features (U, C, S, S), agnostic_logits (K, m, m), classes (K,) row indices into det_weights,
           det_weights (P, 5J), roi_index (K,) row of roi_features of each mask or None (U == K)) -> (K, m, m)
    that turns the class-agnostic stage-2/4 mask logits into final mask logits for a class (e.g.
    partial_sup's Mask^X weight transfer). Trained on foreground RoIs that have a mask, at their
    ground-truth class ("mask_final" loss); at inference applied to every (candidate, class) pair that
    can reach the output, at that pair's class. Stages 2/4 stay class-agnostic: stage 3 needs their
    masks before the class is known.

    forward(images (N, 3, H, W) normalised + padded, image_sizes [(h, w)], targets=None)
      training: dict of unweighted losses (see `loss_weights` / `total_loss`)
      eval:     per image dict of candidate (instance, class) pairs from stages 3 and 5: boxes (P, 4),
                scores (P,) seg_cls softmax at the class, labels (P,) 1..N, mask_probs (P, m, m)
    detect(...) additionally runs NMS + mask voting + pasting (see postprocess.py).
    """

    def __init__(self, backbone: Backbone, num_classes: int, config: MNCConfig,
                 final_mask_head: nn.Module | None = None) -> None:
        super().__init__()
        c = config
        self.config = c
        self.num_classes = num_classes
        self.backbone = backbone
        if len(backbone.strides) == 1:  # single-scale: every anchor size on the one map
            anchor_sizes = (tuple(c.anchor_sizes),)
        else:  # pyramid: each level's sizes are multiples of its stride
            anchor_sizes = tuple(tuple(scale * stride for scale in c.anchor_scales) for stride in backbone.strides.values())
        self.rpn = RegionProposalNetwork(
            backbone.out_channels, c.rpn_channels, anchor_sizes, c.anchor_ratios, c.rpn_fg_iou, c.rpn_bg_iou,
            c.rpn_batch_size, c.rpn_positive_fraction,
            {"training": c.rpn_pre_nms_top_n_train, "testing": c.rpn_pre_nms_top_n_test},
            {"training": c.rpn_post_nms_top_n_train, "testing": c.rpn_post_nms_top_n_test},
            c.rpn_nms_thresh, c.rpn_min_size, c.proposal_grad_clip, c.detach_proposals, c.crowd_ioa_thresh)
        self.mask_head = MaskHead(backbone.out_channels, c.pooled_size, c.mask_fc_dim, c.mask_size)
        self.classify_head = ClassifyHead(backbone.out_channels, c.pooled_size, c.mask_pathway_dim,
                                          c.box_pathway_dim, num_classes)
        self.final_mask_head = final_mask_head
        self.box_coder = det_utils.BoxCoder(weights=tuple(c.bbox_reg_weights))
        # the RoI heads read each RoI from one level: FPN's assignment (Lin et al. 2017, Eq. 1), torchvision's
        # LevelMapper: level = floor(4 + log2(sqrt(area) / 224)), clamped to the pyramid's levels
        self.roi_scales = [1.0 / backbone.strides[name] for name in backbone.roi_levels]
        self.level_mapper = LevelMapper(min(backbone.levels), max(backbone.levels))

    @property
    def loss_weights(self) -> dict[str, float]:
        c = self.config
        return {"rpn_cls": c.loss_rpn_cls, "rpn_box": c.loss_rpn_box, "mask": c.loss_mask, "cls": c.loss_cls,
                "seg_cls": c.loss_seg_cls, "bbox": c.loss_bbox, "cascade": c.loss_cascade, "mask_final": c.loss_mask_final}

    def total_loss(self, losses: dict[str, Tensor]) -> Tensor:
        return total_loss(losses, self.loss_weights)

    # ---- stages 2-3 (and 4-5, same weights) ----
    def roi_features(self, features: dict[str, Tensor], rois: list[Tensor]) -> Tensor:
        """rois: N x (R_i, 4) input pixels -> (R, C, S, S) warped + pooled features, each RoI from its level."""
        idx = torch.cat([torch.full((r.shape[0], 1), i, dtype=r.dtype, device=r.device) for i, r in enumerate(rois)])
        rois5 = torch.cat([idx, torch.cat(rois)], dim=1)  # (R, 5)
        maps = [features[name] for name in self.backbone.roi_levels]
        levels = self.level_mapper([r.detach() for r in rois]) if len(maps) > 1 else None
        return multilevel_roi_warp_pooled(maps, self.roi_scales, rois5, levels, self.config.warp_size)

    def _stages(self, features: dict[str, Tensor], rois: list[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """rois: N x (R_i, 4) -> RoI features (R, C, S, S), mask_logits (R, m, m), cls (R, N+1),
        seg_cls (R, N+1), bbox (R, 4(N+1))."""
        x = self.roi_features(features, rois)  # (R, C, 14, 14)
        mask_logits = self.mask_head(x).float()
        cls, seg, bbox = self.classify_head(x, torch.sigmoid(mask_logits))
        return x, mask_logits, cls.float(), seg.float(), bbox.float()

    def _final_masks(self, x: Tensor, mask_logits: Tensor, classes: Tensor, roi_index: Tensor | None = None) -> Tensor:
        """The final-mask head for K masks: RoI features x (U, C, S, S), agnostic logits (K, m, m), classes
        (K,), roi_index (K,) the row of x of each mask (None: U == K, row k); (K, m, m) logits. Only the
        detection weights of the classes present are gathered (thousands of classes cost nothing here)."""
        present, rows = torch.unique(classes, return_inverse=True)  # a host sync (data-dependent size), Mask^X only
        det_weights = self.classify_head.detection_weights(present)  # (P, 5J)
        return self.final_mask_head(x, mask_logits, rows, det_weights, roi_index).float()

    def _refine(self, rois: list[Tensor], cls: Tensor, bbox: Tensor, image_sizes: list[tuple[int, int]]) -> list[Tensor]:
        """Stage-3 class-specific regression at the argmax foreground class -> next-stage boxes."""
        R = cls.shape[0]
        if R == 0:
            return [r for r in rois]
        c = cls.detach()[:, 1:].argmax(dim=1) + 1
        deltas = bbox.view(R, -1, 4)[torch.arange(R, device=bbox.device), c]  # (R, 4)
        if self.config.detach_proposals:
            deltas = deltas.detach()
        else:
            deltas = clip_gradient(deltas, self.config.proposal_grad_clip / len(rois))  # per image (see rpn.py)
        ref = torch.cat(rois)
        if self.config.detach_proposals:
            ref = ref.detach()
        boxes = self.box_coder.decode_single(deltas, ref)
        counts = [r.shape[0] for r in rois]
        limits = torch.tensor([[w, h, w, h] for h, w in image_sizes], dtype=boxes.dtype).to(boxes.device, non_blocking=True)
        limits = torch.cat([limit.expand(count, 4) for limit, count in zip(limits, counts)])  # (R, 4)
        b = boxes.clamp(min=torch.zeros_like(limits), max=limits)  # every image at once
        # keep boxes at least 1 px wide/high (a box regressed onto the border would otherwise
        # collapse and give infinite box targets)
        b = torch.stack([b[:, 0], b[:, 1], torch.maximum(b[:, 2], b[:, 0] + 1), torch.maximum(b[:, 3], b[:, 1] + 1)], 1)
        return list(b.split(counts))

    def _stage_losses(self, features: dict[str, Tensor], rois: list[Tensor], targets: list[ImageTargets], suffix: str
                      ) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        c = self.config
        labels, seg_fg, box_tgts, mask_sel, m_tgts, gt_areas = [], [], [], [], [], []
        for r, t in zip(rois, targets):  # per image: each has its own ground truth (no host sync here)
            rd = r.detach()
            iou, gi = match_rois(rd, t.boxes)
            fg = iou >= c.roi_fg_iou
            has_gt = t.boxes.shape[0] > 0
            labels.append(torch.where(fg, t.labels[gi], 0) if has_gt else torch.zeros_like(gi))
            seg_fg.append(fg)
            box_tgts.append(self.box_coder.encode_single(t.boxes[gi] if has_gt else rd, rd))
            mask_sel.append(fg & t.has_mask[gi] if has_gt else torch.zeros_like(fg))
            # targets of every RoI, read only where selected: no boolean indexing (a host sync per image)
            if has_gt:
                m_tgts.append(mask_targets(t.masks, gi, rd, c.mask_size, c.mask_target_thresh))
                gt_areas.append(t.masks.flatten(1).sum(1).float()[gi])
            else:
                m_tgts.append(rd.new_zeros((r.shape[0], c.mask_size, c.mask_size)))
                gt_areas.append(rd.new_zeros(r.shape[0]))
        x, mask_logits, cls, seg, bbox = self._stages(features, rois)
        labels_t = torch.cat(labels)
        sel = torch.cat(mask_sel)  # foreground RoIs with a GT mask: they train the masks
        n = len(rois)  # each loss is the mean over the images of each image's own mean (see losses.py)
        image = torch.cat([torch.full((r.shape[0],), i, dtype=torch.long, device=r.device) for i, r in enumerate(rois)])
        tg_all = torch.cat(m_tgts)
        mask_iou = mask_iou_in_roi(torch.sigmoid(mask_logits.detach()), tg_all, torch.cat(rois).detach(),
                                   torch.cat(gt_areas), c.mask_thresh)
        mask_iou = torch.where(sel, mask_iou, 1.0)  # RoIs without a GT mask: the box criterion only
        seg_labels = torch.where(torch.cat(seg_fg) & (mask_iou >= c.seg_mask_iou), labels_t, torch.zeros_like(labels_t))
        losses = {
            "mask" + suffix: mask_loss(mask_logits, tg_all, image, n, keep=sel),
            "cls" + suffix: classification_loss(cls, labels_t, image, n),
            "seg_cls" + suffix: classification_loss(seg, seg_labels, image, n),
            "bbox" + suffix: box_regression_loss(bbox, labels_t, torch.cat(box_tgts), image, n),
        }
        if self.final_mask_head is not None:  # Mask^X: only RoIs whose class has a mask (set A) get here
            # one host sync: the head runs on the selected RoIs only (their number depends on the data)
            rows = torch.where(sel)[0]
            fused = self._final_masks(x[rows], mask_logits[rows], labels_t[rows])
            losses["mask_final" + suffix] = mask_loss(fused, tg_all[rows], image[rows], n)
        return losses, cls, bbox

    def forward(self, images: Tensor, image_sizes: list[tuple[int, int]],
                targets: list[ImageTargets] | None = None, frozen_features: dict[str, Tensor] | None = None,
                score_threshold: float | None = None):
        """frozen_features: precomputed `backbone.frozen(images)` (training with cached frozen-block
        features, a dict of maps); `images` is then only used for its padded shape. score_threshold (eval): the caller's
        detection threshold (default config.score_threshold), which decides which candidates get final masks."""
        c = self.config
        if frozen_features is None:
            features = self.backbone(images)  # level name -> (N, C, H/stride, W/stride)
        else:
            features = self.backbone.from_frozen(frozen_features)
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            proposals, losses = self.rpn(images, features, image_sizes, [t.boxes for t in targets],
                                         [t.crowd_boxes for t in targets])
            rois = []
            for p, t in zip(proposals, targets):  # sampling per image: host syncs in sample_rois (sample sizes depend on the IoUs)
                cand = torch.cat([p, t.boxes.to(p.dtype)]) if t.boxes.numel() else p  # gt boxes appended
                iou, _ = match_rois(cand.detach(), t.boxes)
                keep = sample_rois(iou, c.roi_batch_size, c.roi_positive_fraction, c.roi_fg_iou,
                                   c.roi_bg_iou_lo, c.roi_bg_low_fraction,
                                   ignore=inside_crowd(cand.detach(), t.crowd_boxes, c.crowd_ioa_thresh))
                rois.append(cand[keep])
            l23, cls, bbox = self._stage_losses(features, rois, targets, "")
            losses.update(l23)
            if c.num_stages == 5:
                rois2 = self._refine(rois, cls, bbox, image_sizes)
                l45, _, _ = self._stage_losses(features, rois2, targets, "_s45")
                losses.update(l45)
            return losses
        return self._candidates(images, features, image_sizes, score_threshold)

    def _candidates(self, images: Tensor, features: dict[str, Tensor], image_sizes: list[tuple[int, int]],
                    score_threshold: float | None = None) -> list[dict[str, Tensor]]:
        """Eval: per image, the (instance, class) pairs that can reach post-processing, from stage 3 (300 RoIs)
        and stage 5 (the refined top RoIs): class probability above min(score threshold, vote threshold),
        at most `max_candidates`. Each pair's mask is its own class's final mask (the final-mask head at
        that class; without one, the class-agnostic stage-2/4 mask)."""
        c = self.config
        proposals, _ = self.rpn(images, features, image_sizes)
        x, mask_logits, cls, seg, bbox = self._stages(features, proposals)
        parts = [(proposals, x, mask_logits, self._class_scores(cls, seg))]
        if c.test_stages == 5:
            rois2 = self._refine(proposals, cls, bbox, image_sizes)
            top_n = c.cascade_top_n_test
            if top_n is not None:  # refine only the most object-like RoIs of each image
                fg = F.softmax(cls, -1)[:, 1:].amax(dim=1) if cls.shape[0] else cls.new_zeros(0)
                sel = [fg[start:start + r.shape[0]].topk(min(top_n, r.shape[0])).indices
                       for r, start in zip(rois2, _starts(rois2))]
                rois2 = [r[i] for r, i in zip(rois2, sel)]
            x2, mask_logits2, cls2, seg2, _ = self._stages(features, rois2)
            parts.append((rois2, x2, mask_logits2, self._class_scores(cls2, seg2)))
        thresh = c.score_threshold if score_threshold is None else float(score_threshold)
        low = min(thresh, c.vote_score_threshold) if c.mask_voting else thresh
        # rows: every RoI of every part, part-major then image-major
        boxes = torch.cat([torch.cat(p[0]) for p in parts]).detach()
        probs = torch.cat([p[3] for p in parts])
        image_of_row = torch.cat([torch.full((r.shape[0],), i, dtype=torch.long, device=boxes.device)
                                  for p in parts for i, r in enumerate(p[0])])
        pair_rows, pair_labels = [], []
        for i in range(len(proposals)):
            rows = torch.where(image_of_row == i)[0]
            k, label = torch.where(probs[rows, 1:] > low)
            if k.numel() > c.max_candidates:  # a very low threshold with many classes: keep the best pairs
                top = probs[rows[k], label + 1].topk(c.max_candidates).indices
                k, label = k[top], label[top]
            pair_rows.append(rows[k])
            pair_labels.append(label + 1)
        rows, labels = torch.cat(pair_rows), torch.cat(pair_labels)
        pair_logits = self._pair_mask_logits(parts, rows, labels)
        out, start = [], 0
        for r in pair_rows:
            part = slice(start, start + r.numel())
            out.append({"boxes": boxes[r], "scores": probs[r, labels[part]].detach(), "labels": labels[part],
                        "mask_probs": torch.sigmoid(pair_logits[part]).detach()})
            start += r.numel()
        return out

    def _class_scores(self, cls: Tensor, seg: Tensor) -> Tensor:
        """(R, N+1) class probabilities of the output (config.test_score)."""
        source = self.config.test_score
        if source == "cls":
            return F.softmax(cls, -1)
        if source == "mean":
            return (F.softmax(cls, -1) * F.softmax(seg, -1)).sqrt()
        return F.softmax(seg, -1)

    def _pair_mask_logits(self, parts: list[tuple], rows: Tensor, labels: Tensor) -> Tensor:
        """Final mask logits (P, m, m) of the pairs (row of the concatenated parts, class); the final-mask
        head runs once per distinct RoI and is applied at each pair's class."""
        mask_logits = torch.cat([p[2] for p in parts])
        if self.final_mask_head is None or rows.numel() == 0:
            return mask_logits[rows]
        distinct, roi_index = torch.unique(rows, return_inverse=True)
        x_parts, offset = [], 0
        for _, x, _, _ in parts:  # gather the distinct RoIs' features part by part (no copy of whole parts)
            here = distinct[(distinct >= offset) & (distinct < offset + x.shape[0])]
            x_parts.append(x[here - offset])
            offset += x.shape[0]
        return self._final_masks(torch.cat(x_parts), mask_logits[rows], labels, roi_index)

    @torch.no_grad()
    def masks_for_boxes(self, images: Tensor, image_sizes: list[tuple[int, int]], boxes: list[Tensor],
                        labels: list[Tensor]) -> list[Tensor]:
        """Masks for given boxes (e.g. drawn by a person): per image (K_i, m, m) probabilities inside
        boxes (K_i, 4) (network-input pixels) of classes labels (K_i,) 1..N: the stage-2 mask, fused with
        the final-mask head at that class when the model has one (so box-only classes get their shape)."""
        for b in boxes:  # a person's boxes: refused here, not in torchvision's C code (mnc_core.roi_warp)
            check_boxes(b.detach(), "masks_for_boxes", degenerate=True)
        was_training = self.training
        self.eval()
        try:
            features = self.backbone(images)
            dtype = next(iter(features.values())).dtype
            x, mask_logits, _, _, _ = self._stages(features, [b.to(dtype) for b in boxes])
            if self.final_mask_head is not None and x.shape[0]:
                mask_logits = self._final_masks(x, mask_logits, torch.cat(labels).to(x.device))
        finally:
            self.train(was_training)
        return list(torch.sigmoid(mask_logits).split([b.shape[0] for b in boxes]))

    @torch.no_grad()
    def detect(self, images: Tensor, image_sizes: list[tuple[int, int]], original_sizes: list[tuple[int, int]] | None = None,
               score_threshold: float | None = None) -> list[dict[str, Tensor]]:
        """Eval-mode inference + post-processing. Returns per image: boxes (D, 4) in original pixels,
        scores (D,), labels (D,) class indices 1..N, masks (D, H0, W0) bool; sorted by score desc."""
        was_training = self.training
        self.eval()
        try:
            cands = self.forward(images, image_sizes, score_threshold=score_threshold)
        finally:
            self.train(was_training)
        original_sizes = original_sizes or image_sizes
        return [postprocess_image(cd["boxes"].float(), cd["scores"].float(), cd["labels"], cd["mask_probs"].float(),
                                  size, orig, self.config, score_threshold)
                for cd, size, orig in zip(cands, image_sizes, original_sizes)]


def _starts(rois: list[Tensor]) -> list[int]:
    out, s = [], 0
    for r in rois:
        out.append(s)
        s += r.shape[0]
    return out


def build_model(config: MNCConfig, num_classes: int, backbone_weights: str | None = None,
                final_mask_head: nn.Module | None = None) -> MNC:
    """backbone_weights: None = torchvision ImageNet weights via the weights API (clear error offline),
    "none" = explicit random init, or a path to a .pth state dict. final_mask_head: see `MNC`."""
    backbone = build_backbone(config, backbone_weights)
    return MNC(backbone, num_classes, config, final_mask_head)

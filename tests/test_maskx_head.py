"""The weight transfer head: stop-gradient, transfer to classes without masks, shapes."""

from __future__ import annotations

import pytest
import torch

from partial_sup.maskx import ClassMaskHead, MaskXConfig

C, S, M, N, DET = 16, 14, 28, 5, 40


def make(method="transfer", stop_gradient=True):
    torch.manual_seed(0)
    head = ClassMaskHead(C, M, DET, MaskXConfig(method=method, fcn_channels=8, stop_gradient=stop_gradient))
    det_weights = torch.randn(N + 1, DET, requires_grad=True)
    return head, det_weights


def mask_loss_grads(head, det_weights):
    x = torch.randn(6, C, S, S)
    agnostic = torch.randn(6, M, M)
    classes = torch.tensor([1, 2, 2, 3, 1, 4])
    logits = head(x, agnostic, classes, det_weights)
    assert logits.shape == (6, M, M)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, (torch.rand(6, M, M) > 0.5).float())
    loss.backward()
    return det_weights.grad, head.transfer.fc1.weight.grad


def test_stop_gradient_keeps_the_mask_loss_off_the_detection_weights():
    head, det_weights = make()
    det_grad, transfer_grad = mask_loss_grads(head, det_weights)
    assert det_grad is None or torch.count_nonzero(det_grad) == 0
    assert transfer_grad is not None and transfer_grad.abs().sum() > 0


def test_without_stop_gradient_the_detection_weights_get_gradients():
    head, det_weights = make(stop_gradient=False)
    det_grad, _ = mask_loss_grads(head, det_weights)
    assert det_grad is not None and det_grad[1:5].abs().sum() > 0 and det_grad[5].abs().sum() == 0


def test_each_class_gets_its_own_weights_and_agnostic_shares_one():
    head, det_weights = make()
    weights = head.mask_weights(det_weights)
    assert weights.shape == (N + 1, 8) and not torch.allclose(weights[1], weights[2])
    agnostic, det_weights = make("agnostic")
    shared = agnostic.mask_weights(det_weights)
    assert torch.equal(shared[1], shared[4])


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="method"):
        MaskXConfig(method="magic")

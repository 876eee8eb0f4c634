import math

import torch
import torch.nn.functional as F

from querylife.losses import AlignmentWeights, LogitScale, alignment_loss, info_nce


def test_info_nce_known_value() -> None:
    a = torch.eye(2)
    loss = info_nce(a, a, 1.0, symmetric=False)
    # logits [[1, 0], [0, 1]] -> -log(e / (e + 1)) per row
    assert math.isclose(float(loss), math.log(1 + math.exp(-1)), rel_tol=1e-6)
    assert math.isclose(float(info_nce(a, a, 1.0)), math.log(1 + math.exp(-1)), rel_tol=1e-6)


def test_mask_removes_exactly_the_masked_negatives() -> None:
    torch.manual_seed(0)
    a = F.normalize(torch.randn(4, 8), dim=-1)
    b = F.normalize(torch.randn(4, 8), dim=-1)
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0, 2] = True
    mask[3, 1] = True
    got = info_nce(a, b, 10.0, exclude_mask=mask, symmetric=False)
    logits = 10.0 * a @ b.t()
    rows = []
    for i in range(4):
        keep = [j for j in range(4) if not mask[i, j]]
        rows.append(-logits[i, i] + torch.logsumexp(logits[i, keep], dim=0))
    assert torch.allclose(got, torch.stack(rows).mean(), atol=1e-6)
    # an unmasked loss differs (the mask did something)
    assert not torch.allclose(got, info_nce(a, b, 10.0, symmetric=False))


def test_mask_never_removes_the_positive_and_masked_get_no_gradient() -> None:
    torch.manual_seed(1)
    a = F.normalize(torch.randn(3, 5), dim=-1)
    b = F.normalize(torch.randn(3, 5), dim=-1).requires_grad_(True)
    all_true = torch.ones(3, 3, dtype=torch.bool)
    loss = info_nce(a, b, 5.0, exclude_mask=all_true)
    # only positives remain in every denominator: loss is exactly 0 and finite
    assert float(loss.detach()) == 0.0
    mask = torch.zeros(3, 3, dtype=torch.bool)
    mask[0, 1] = True
    mask[2, 1] = True
    b2 = b.detach().clone().requires_grad_(True)
    info_nce(a, b2, 5.0, exclude_mask=mask, symmetric=False).backward()
    # b_1 is masked for rows 0 and 2, so only row 1 (its own positive row) gives it gradient
    g_row1_only = b.detach().clone().requires_grad_(True)
    logits = 5.0 * a[1:2] @ g_row1_only.t()
    (F.cross_entropy(logits, torch.tensor([1])) / 3).backward()
    assert g_row1_only.grad is not None and b2.grad is not None
    assert torch.allclose(b2.grad[1], g_row1_only.grad[1], atol=1e-6)


def test_symmetric_uses_transposed_mask() -> None:
    torch.manual_seed(2)
    a = F.normalize(torch.randn(3, 4), dim=-1)
    b = F.normalize(torch.randn(3, 4), dim=-1)
    mask = torch.zeros(3, 3, dtype=torch.bool)
    mask[0, 1] = True
    sym = info_nce(a, b, 3.0, exclude_mask=mask)
    expected = 0.5 * (
        info_nce(a, b, 3.0, mask, symmetric=False) + info_nce(b, a, 3.0, mask.t(), symmetric=False)
    )
    assert torch.allclose(sym, expected, atol=1e-7)


def test_alignment_total_is_weighted_sum() -> None:
    torch.manual_seed(3)
    q, f, i, t = (F.normalize(torch.randn(6, 8), dim=-1) for _ in range(4))
    w = AlignmentWeights(main=1.0, query_image=0.5, query_title=0.25, image_title=0.125)
    total, parts = alignment_loss(q, f, i, t, torch.tensor(7.0), w)
    expected = (
        parts["main"]
        + 0.5 * parts["query_image"]
        + 0.25 * parts["query_title"]
        + 0.125 * parts["image_title"]
    )
    assert math.isclose(float(total), expected, rel_tol=1e-5)
    off, parts_off = alignment_loss(q, f, i, t, torch.tensor(7.0), AlignmentWeights(1.0, 0.0, 0.0, 0.0))
    assert set(parts_off) == {"main"} and math.isclose(float(off), parts["main"], rel_tol=1e-6)


def test_logit_scale_clamped() -> None:
    s = LogitScale(0.07)
    assert math.isclose(float(s().detach()), 1 / 0.07, rel_tol=1e-5)
    with torch.no_grad():
        s.value.fill_(10.0)
    assert math.isclose(float(s().detach()), 100.0, rel_tol=1e-5)

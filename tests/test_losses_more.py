"""Barlow Twins, SimSiam/BYOL cosine losses and the triplet loss against direct float64 formulas,
hand cases, gradchecks and the invariances they must have; SupCon's scale invariance and labels."""
import math

import pytest
import torch

from fastssl.losses import (barlow_twins_loss, byol_loss, negative_cosine, ntxent_loss, supcon_loss,
                            triplet_loss)

pytestmark = pytest.mark.usefixtures("float64")


# ------------------------------------------------------------------ Barlow Twins

def loop_barlow(z1, z2, lambd, eps=1e-5):
    """Entry by entry from the formula in docs/losses.md (biased variance, eps inside the square root)."""
    n, d = z1.shape

    def standardise(z):
        cols = []
        for j in range(d):
            col = [float(v) for v in z[:, j]]
            mean = sum(col) / n
            var = sum((v - mean) ** 2 for v in col) / n
            cols.append([(v - mean) / math.sqrt(var + eps) for v in col])
        return cols  # d lists of n values

    a, b = standardise(z1), standardise(z2)
    total = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[i][k] * b[j][k] for k in range(n)) / n
            total += (1 - c) ** 2 if i == j else lambd * c ** 2
    return total


@pytest.mark.parametrize("lambd", [0.0051, 0.5])
def test_barlow_matches_loop(lambd):
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    assert barlow_twins_loss(z1, z2, lambd).item() == pytest.approx(loop_barlow(z1, z2, lambd), rel=1e-12)


def test_barlow_hand_case():
    # One dimension, values +-1 (mean 0, biased variance 1): z~ = z / sqrt(1 + eps).
    z = torch.tensor([[1.0], [-1.0]])
    c_same, c_flip = 1 / (1 + 1e-5), -1 / (1 + 1e-5)
    assert barlow_twins_loss(z, z).item() == pytest.approx((1 - c_same) ** 2, rel=1e-9)
    assert barlow_twins_loss(z, -z).item() == pytest.approx((1 - c_flip) ** 2, rel=1e-9)  # ~ 4


def test_barlow_zero_for_identical_decorrelated_standardised_views():
    # Columns of a scaled orthogonal matrix with mean 0: already standardised and decorrelated.
    n, d = 16, 5
    q, _ = torch.linalg.qr(torch.randn(n, n))
    ones = torch.ones(n, 1) / math.sqrt(n)
    basis = q - ones @ (ones.T @ q)          # project out the mean direction
    basis, _ = torch.linalg.qr(basis[:, : d])  # orthonormal, each column has mean 0
    z = basis * math.sqrt(n)                   # biased variance 1 per column
    assert barlow_twins_loss(z, z).item() < 1e-8            # only eps keeps C_ii at 1 - 1e-5
    # And it is invariant to a per-dimension affine change of either view (BatchNorm without affine).
    scale, shift = torch.rand(d) + 0.5, torch.randn(d)
    assert barlow_twins_loss(z * scale + shift, z).item() < 1e-8
    # A shuffled batch in one view breaks the correlation.
    assert barlow_twins_loss(z, z.roll(1, 0)).item() > 1.0


def test_barlow_gradcheck_and_errors():
    z1, z2 = torch.randn(5, 3, requires_grad=True), torch.randn(5, 3, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: barlow_twins_loss(a, b, 0.3), (z1, z2))
    with pytest.raises(ValueError, match="at least 2"):
        barlow_twins_loss(torch.randn(1, 3), torch.randn(1, 3))
    with pytest.raises(ValueError, match="shape"):
        barlow_twins_loss(torch.randn(4, 3), torch.randn(4, 2))


# ------------------------------------------------------------------ SimSiam's D and BYOL

def loop_cos(p, z):
    out = []
    for a, b in zip(p.tolist(), z.tolist()):
        dot = sum(x * y for x, y in zip(a, b))
        out.append(dot / math.sqrt(sum(x * x for x in a)) / math.sqrt(sum(y * y for y in b)))
    return out


def test_negative_cosine_and_byol_match_formulas():
    p, z = torch.randn(7, 5), torch.randn(7, 5)
    cos = loop_cos(p, z)
    assert negative_cosine(p, z).item() == pytest.approx(-sum(cos) / 7, rel=1e-12)
    assert byol_loss(p, z).item() == pytest.approx(sum(2 - 2 * c for c in cos) / 7, rel=1e-12)
    # 2 - 2 cos is the squared distance of the normalised vectors.
    pn, zn = p / p.norm(dim=1, keepdim=True), z / z.norm(dim=1, keepdim=True)
    assert byol_loss(p, z).item() == pytest.approx((pn - zn).pow(2).sum(1).mean().item(), rel=1e-12)


def test_cosine_losses_hand_cases_and_scale_invariance():
    p, z = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[1.0, 1.0], [0.0, -3.0]])
    assert negative_cosine(p, z).item() == pytest.approx(-(1 / math.sqrt(2) - 1) / 2)
    assert byol_loss(p, z).item() == pytest.approx(((2 - math.sqrt(2)) + 4) / 2)
    assert negative_cosine(p, p).item() == pytest.approx(-1.0)
    assert byol_loss(p, p).item() == pytest.approx(0.0, abs=1e-12)
    q, w = torch.randn(6, 4), torch.randn(6, 4)
    s = torch.rand(6, 1) + 0.1  # per-row positive scales
    assert negative_cosine(3 * s * q, w / s).item() == pytest.approx(negative_cosine(q, w).item(), rel=1e-12)
    assert byol_loss(s * q, 2 * w).item() == pytest.approx(byol_loss(q, w).item(), rel=1e-12)


def test_cosine_losses_gradcheck_and_no_hidden_stop_gradient():
    p, z = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    assert torch.autograd.gradcheck(negative_cosine, (p, z))
    assert torch.autograd.gradcheck(byol_loss, (p, z))
    negative_cosine(p, z).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0  # the method, not the loss, detaches z


# ------------------------------------------------------------------ Triplet

def loop_triplet(x, y, margin, mining):
    """All anchors, positives and negatives by brute force, straight from the formula (docs/losses.md)."""
    e = [[v / math.sqrt(sum(w * w for w in row)) for v in row] for row in x.tolist()]
    y = y.tolist()
    m = len(e)

    def d(i, j):
        return sum((a - b) ** 2 for a, b in zip(e[i], e[j]))

    terms = []
    for a in range(m):
        negs = [d(a, n) for n in range(m) if y[n] != y[a]]
        pos = [d(a, p) for p in range(m) if p != a and y[p] == y[a]]
        if not negs or not pos:
            continue
        if mining == "batch_hard":
            terms.append(max(0.0, max(pos) - min(negs) + margin))
            continue
        for dp in pos:
            semi = [dn for dn in negs if dp < dn < dp + margin]
            dn = min(semi) if semi else min(negs)
            terms.append(max(0.0, dp - dn + margin))
    return sum(terms) / len(terms) if terms else 0.0


@pytest.mark.parametrize("mining", ["semihard", "batch_hard"])
@pytest.mark.parametrize("margin", [0.2, 1.0])
def test_triplet_matches_loop(mining, margin):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(10, 3, generator=g)
    y = torch.tensor([0, 1, 2, 0, 1, 0, 1, 2, 2, 0])
    assert triplet_loss(x, y, margin, mining).item() == pytest.approx(loop_triplet(x, y, margin, mining), rel=1e-12)


def test_triplet_two_view_batch_uses_views_as_positives():
    # Unique labels per image: the only positive of a view is the other view of its image.
    g = torch.Generator().manual_seed(4)
    e1, e2 = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    y = torch.arange(5)
    x, yy = torch.cat([e1, e2]), torch.cat([y, y])
    for mining in ("semihard", "batch_hard"):
        assert triplet_loss(x, yy, 0.2, mining).item() == pytest.approx(loop_triplet(x, yy, 0.2, mining), rel=1e-12)


def angles(*deg):
    return torch.tensor([[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in deg])


def sq(deg):  # squared chord length between unit vectors deg degrees apart
    return 2 - 2 * math.cos(math.radians(deg))


def test_triplet_hand_case():
    # Anchor at 0 deg, positive at 30 deg, negatives at 35 and 120 deg (label 1), margin 0.2.
    x, y = angles(0, 30, 35, 120), torch.tensor([0, 0, 1, 1])
    # Pairs: (0,1) semi-hard n=35 (sq(30) < sq(35) < sq(30)+0.2); (1,0) from 30 deg: d(1,2) = sq(5) < sq(30),
    # no semi-hard (d(1,3) = sq(90) = 2 > sq(30) + 0.2), hardest n=2 -> loss sq(30) - sq(5) + 0.2;
    # (2,3) and (3,2): positives sq(85), negatives of 2: sq(35), sq(5); of 3: sq(120), sq(90).
    def term(dp, candidates):
        semi = [dn for dn in candidates if dp < dn < dp + 0.2]
        return max(0.0, dp - (min(semi) if semi else min(candidates)) + 0.2)
    expected = (term(sq(30), [sq(35), sq(120)]) + term(sq(30), [sq(5), sq(90)])
                + term(sq(85), [sq(35), sq(5)]) + term(sq(85), [sq(120), sq(90)])) / 4
    assert term(sq(30), [sq(35), sq(120)]) == pytest.approx(sq(30) - sq(35) + 0.2)
    assert term(sq(30), [sq(5), sq(90)]) == pytest.approx(sq(30) - sq(5) + 0.2)
    assert triplet_loss(x, y, 0.2).item() == pytest.approx(expected, rel=1e-12)


def test_triplet_zero_when_margins_hold_and_scale_invariant():
    # Two tight clusters on opposite sides of the circle: d(a,p) <= sq(10), d(a,n) >= sq(160) >> + 0.2.
    x, y = angles(0, 5, 10, 180, 185, 170), torch.tensor([0, 0, 0, 1, 1, 1])
    for mining in ("semihard", "batch_hard"):
        assert triplet_loss(x, y, 0.2, mining).item() == 0.0
        assert triplet_loss(x, y, 3.9, mining).item() > 0  # a margin wider than the gap is violated
    g = torch.Generator().manual_seed(5)
    z, labels = torch.randn(8, 3, generator=g), torch.tensor([0, 1, 0, 1, 2, 2, 0, 1])
    s = torch.rand(8, 1, generator=g) + 0.1
    for mining in ("semihard", "batch_hard"):
        assert triplet_loss(s * z, labels, 0.2, mining).item() == pytest.approx(
            triplet_loss(z, labels, 0.2, mining).item(), rel=1e-12)


def test_triplet_ties_and_order():
    # The open window: a negative exactly at d(a,p) is hard (not semi-hard); one exactly at d(a,p) + m
    # contributes 0 either way. Row order does not matter; tied negatives share the gradient.
    x, y = angles(0, 40, 40, 200), torch.tensor([0, 0, 1, 1])   # negative 2 coincides with positive 1
    assert triplet_loss(x, y, 0.2).item() == pytest.approx(loop_triplet(x, y, 0.2, "semihard"), rel=1e-12)
    perm = torch.tensor([3, 1, 0, 2])
    for mining in ("semihard", "batch_hard"):
        assert triplet_loss(x[perm], y[perm], 0.2, mining).item() == pytest.approx(
            triplet_loss(x, y, 0.2, mining).item(), rel=1e-12)
    dup = angles(0, 20, 30, 30)  # two identical negatives of anchor 0
    dup.requires_grad_(True)
    triplet_loss(dup, torch.tensor([0, 0, 1, 1]), 0.2, "batch_hard").backward()
    assert torch.allclose(dup.grad[2], dup.grad[3])
    # semi-hard: for (0, 1) the tied pair at 30 deg is the semi-hard negative, for (1, 0) the hardest
    dup.grad = None
    triplet_loss(dup, torch.tensor([0, 0, 1, 1]), 0.2, "semihard").backward()
    assert torch.allclose(dup.grad[2], dup.grad[3]) and dup.grad[2].abs().sum() > 0


def test_triplet_degenerate_batches_and_errors():
    x = torch.randn(4, 3, requires_grad=True)
    loss = triplet_loss(x, torch.zeros(4, dtype=torch.long))   # one class: no negatives
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    assert triplet_loss(x, torch.arange(4), mining="batch_hard").item() == 0.0  # no positives
    with pytest.raises(ValueError, match="mining"):
        triplet_loss(x, torch.arange(4), mining="hard")
    with pytest.raises(ValueError, match="labels"):
        triplet_loss(x, torch.arange(3))


@pytest.mark.parametrize("mining", ["semihard", "batch_hard"])
def test_triplet_gradcheck(mining):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(8, 3, generator=g, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    assert torch.autograd.gradcheck(lambda a: triplet_loss(a, y, 0.5, mining), (x,))


# ------------------------------------------------------------------ SupCon: invariances and labels

def test_supcon_scale_invariant_and_duplicate_labels():
    z1, z2, y = torch.randn(6, 4), torch.randn(6, 4), torch.tensor([0, 1, 0, 2, 1, 0])
    base = supcon_loss(z1, z2, y, 0.2).item()
    s = torch.rand(6, 1) + 0.1
    assert supcon_loss(s * z1, 3 * z2, y, 0.2).item() == pytest.approx(base, rel=1e-12)
    assert ntxent_loss(s * z1, 3 * z2, 0.2).item() == pytest.approx(ntxent_loss(z1, z2, 0.2).item(), rel=1e-12)
    # A duplicated image is one more positive of weight 1/|P(k)|: for a batch holding two copies of
    # one image, each row's positives are the three other rows, all at similarity 1/tau.
    a = torch.tensor([[1.0, 0.0]])
    b = torch.tensor([[0.0, 1.0]])
    z = torch.cat([a, a, b])
    tau = 0.5
    y2 = torch.tensor([7, 7, 3])
    row_a = -2 + math.log(3 * math.exp(2) + 2)      # positives: 3 at s = 2; others: 2 at s = 0
    row_b = -2 + math.log(math.exp(2) + 4)          # positive: its other view; others: 4 at s = 0
    assert supcon_loss(z, z, y2, tau).item() == pytest.approx((4 * row_a + 2 * row_b) / 6, rel=1e-12)

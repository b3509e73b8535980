"""Reference losses against direct formulas, gradchecks and the JSD's defining properties."""
import math

import pytest
import torch
import torch.nn.functional as F

from fastssl.losses import gaussian_jsd, ntxent_loss, reparameterize, supcon_loss

pytestmark = pytest.mark.usefixtures("float64")


def loop_ntxent(z1, z2, tau, variant):
    """Row by row, straight from the formula (docs/losses.md)."""
    n = len(z1)
    u = F.normalize(torch.cat([z1, z2]), dim=1)
    total = 0.0
    for k in range(2 * n):
        p = (k + n) % (2 * n)
        if variant == "simclr":
            others = [l for l in range(2 * n) if l != k]
        else:
            others = [l for l in range(2 * n) if (l // n) != (k // n) and l != p]
        s = lambda l: float(u[k] @ u[l]) / tau  # noqa: E731
        total += -s(p) + math.log(sum(math.exp(s(l)) for l in others))
    return total / (2 * n)


def loop_supcon(z1, z2, y, tau):
    n = len(z1)
    u = F.normalize(torch.cat([z1, z2]), dim=1)
    yy = torch.cat([y, y])
    total = 0.0
    for k in range(2 * n):
        s = lambda l: float(u[k] @ u[l]) / tau  # noqa: E731
        pos = [l for l in range(2 * n) if l != k and yy[l] == yy[k]]
        total += -sum(s(p) for p in pos) / len(pos) + math.log(sum(math.exp(s(l)) for l in range(2 * n) if l != k))
    return total / (2 * n)


@pytest.mark.parametrize("variant", ["simclr", "decoupled"])
@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
def test_ntxent_matches_loop(variant, tau):
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    assert ntxent_loss(z1, z2, tau, variant).item() == pytest.approx(loop_ntxent(z1, z2, tau, variant), rel=1e-10)


def test_ntxent_hand_case():
    # Two orthogonal pairs, views identical: s(k,p) = 1/tau, s to the other image's views = 0.
    z = torch.eye(2)
    tau = 0.5
    simclr = -2 + math.log(math.exp(2) + 2)            # denominator: positive + 2 orthogonal rows
    decoupled = -2 + math.log(1.0)                     # denominator: the other image's view only
    assert ntxent_loss(z, z, tau, "simclr").item() == pytest.approx(simclr)
    assert ntxent_loss(z, z, tau, "decoupled").item() == pytest.approx(decoupled)


def test_ntxent_scale_invariant_and_symmetric():
    z1, z2 = torch.randn(6, 4), torch.randn(6, 4)
    base = ntxent_loss(z1, z2, 0.2)
    assert ntxent_loss(3.0 * z1, 0.5 * z2, 0.2).item() == pytest.approx(base.item())
    assert ntxent_loss(z2, z1, 0.2).item() == pytest.approx(base.item())


def test_ntxent_rejects_bad_input():
    with pytest.raises(ValueError, match="variant"):
        ntxent_loss(torch.randn(3, 2), torch.randn(3, 2), 0.2, "nope")
    with pytest.raises(ValueError, match="N >= 2"):
        ntxent_loss(torch.randn(1, 2), torch.randn(1, 2), 0.2, "decoupled")
    with pytest.raises(ValueError, match="temperature"):
        ntxent_loss(torch.randn(3, 2), torch.randn(3, 2), 0.0)


@pytest.mark.parametrize("labels", [[0, 1, 2, 3, 4], [0, 0, 1, 1, 1], [2, 2, 2, 2, 2]])
def test_supcon_matches_loop(labels):
    y = torch.tensor(labels)
    z1, z2 = torch.randn(5, 3), torch.randn(5, 3)
    assert supcon_loss(z1, z2, y, 0.3).item() == pytest.approx(loop_supcon(z1, z2, y, 0.3), rel=1e-10)


def test_supcon_with_unique_labels_is_simclr():
    z1, z2 = torch.randn(7, 5), torch.randn(7, 5)
    assert supcon_loss(z1, z2, torch.arange(7), 0.2).item() == pytest.approx(ntxent_loss(z1, z2, 0.2).item())


def test_gradcheck_contrastive():
    z1 = torch.randn(4, 3, requires_grad=True)
    z2 = torch.randn(4, 3, requires_grad=True)
    for variant in ("simclr", "decoupled"):
        assert torch.autograd.gradcheck(lambda a, b: ntxent_loss(a, b, 0.3, variant), (z1, z2))
    y = torch.tensor([0, 1, 0, 2])
    assert torch.autograd.gradcheck(lambda a, b: supcon_loss(a, b, y, 0.3), (z1, z2))


def test_reparameterize():
    mu, logvar, eps = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3)
    assert torch.equal(reparameterize(mu, logvar, eps), mu + torch.exp(0.5 * logvar) * eps)
    torch.manual_seed(0)
    z = reparameterize(torch.full((20000, 2), 3.0), torch.full((20000, 2), math.log(4.0)))
    assert z.mean().item() == pytest.approx(3.0, abs=0.05)
    assert z.std().item() == pytest.approx(2.0, abs=0.05)


def kl_normal(a, s, m, v):
    return 0.5 * (s / v + (a - m) ** 2 / v - 1 + math.log(v) - math.log(s))


def test_jsd_matches_kl_definition():
    mu1, mu2 = torch.randn(3, 4), torch.randn(3, 4)
    lv1, lv2 = torch.randn(3, 4), torch.randn(3, 4)
    expected = 0.0
    for i in range(3):
        for j in range(4):
            s1, s2 = math.exp(lv1[i, j]), math.exp(lv2[i, j])
            m, v = (mu1[i, j] + mu2[i, j]).item() / 2, (s1 + s2) / 2
            expected += 0.5 * kl_normal(mu1[i, j].item(), s1, m, v) + 0.5 * kl_normal(mu2[i, j].item(), s2, m, v)
    assert gaussian_jsd(mu1, lv1, mu2, lv2).item() == pytest.approx(expected / 3, rel=1e-10)


def test_jsd_hand_case():
    # Equal variances s: JSD = (mu1 - mu2)^2 / (8 s).
    one = torch.ones(1, 1)
    assert gaussian_jsd(0 * one, math.log(2) * one, 4 * one, math.log(2) * one).item() == pytest.approx(1.0)


def test_jsd_nonnegative_and_zero_iff_equal():
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        mu1, mu2, lv1, lv2 = (3 * torch.randn(8, 5, generator=g) for _ in range(4))
        assert gaussian_jsd(mu1, lv1, mu2, lv2).item() > 0
        assert gaussian_jsd(mu1, lv1, mu1, lv1).item() == pytest.approx(0.0, abs=1e-12)
    # Zero only when both mean and variance agree.
    mu, lv = torch.randn(2, 3), torch.randn(2, 3)
    assert gaussian_jsd(mu, lv, mu, lv + 0.1).item() > 0
    assert gaussian_jsd(mu, lv, mu + 0.1, lv).item() > 0


def test_jsd_gradcheck_and_extreme_logvar():
    args = [torch.randn(3, 4, requires_grad=True) for _ in range(4)]
    assert torch.autograd.gradcheck(gaussian_jsd, args)
    big = torch.full((2, 2), 80.0)
    assert torch.isfinite(gaussian_jsd(torch.zeros(2, 2), -big, torch.ones(2, 2), big))

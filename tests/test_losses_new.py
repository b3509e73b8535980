"""VICReg, MoCo v3 and DINO reference losses against entry-by-entry float64 loops of their docstring
formulas, hand cases, gradchecks, invariances and bad input."""
import math

import pytest
import torch

from fastssl.losses import dino_loss, mocov3_loss, vicreg_loss

pytestmark = pytest.mark.usefixtures("float64")


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ VICReg

def loop_vicreg(z1, z2, sim, var, cov, gamma=1.0, eps=1e-4):
    n, d = z1.shape
    a, b = z1.tolist(), z2.tolist()
    inv = sum((a[i][j] - b[i][j]) ** 2 for i in range(n) for j in range(d)) / (n * d)

    def terms(z):
        mean = [sum(z[i][j] for i in range(n)) / n for j in range(d)]
        c = [[sum((z[k][i] - mean[i]) * (z[k][j] - mean[j]) for k in range(n)) / (n - 1) for j in range(d)]
             for i in range(d)]
        v = sum(max(0.0, gamma - math.sqrt(c[j][j] + eps)) for j in range(d)) / d
        off = sum(c[i][j] ** 2 for i in range(d) for j in range(d) if i != j) / d
        return v, off

    (v1, c1), (v2, c2) = terms(a), terms(b)
    return sim * inv + var * (v1 + v2) + cov * (c1 + c2)


@pytest.mark.parametrize("weights", [(25.0, 25.0, 1.0), (1.0, 3.0, 0.5)])
@pytest.mark.parametrize("scale", [0.3, 2.0])  # std below and above gamma: the hinge both active and not
def test_vicreg_matches_loop(weights, scale):
    z1, z2 = scale * randn(7, 5, seed=1), scale * randn(7, 5, seed=2)
    want = loop_vicreg(z1, z2, *weights)
    assert vicreg_loss(z1, z2, *weights).item() == pytest.approx(want, rel=1e-12)


def test_vicreg_hand_case_and_terms():
    # Identical views z = [[1, 0], [-1, 0]]: invariance 0; column 0 has variance 2, std > 1 (no hinge);
    # column 1 has variance 0, std sqrt(1e-4) = 0.01 (hinge 0.99, / d = 2); Cov's off-diagonal is 0.
    z = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    hinge = (1 - math.sqrt(1e-4)) / 2
    assert vicreg_loss(z, z).item() == pytest.approx(25 * 2 * hinge)
    assert vicreg_loss(z, z, var_weight=0.0).item() == 0.0
    # Perfectly correlated columns: Cov = [[2, 2], [2, 2]] -> off-diagonal 2 * 4 / d = 4 per view.
    c = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    assert vicreg_loss(c, c, 0.0, 0.0, 1.0).item() == pytest.approx(8.0)
    # Invariance alone is the MSE.
    z1, z2 = randn(4, 3, seed=3), randn(4, 3, seed=4)
    assert vicreg_loss(z1, z2, 1.0, 0.0, 0.0).item() == pytest.approx(((z1 - z2) ** 2).mean().item())


def test_vicreg_gradcheck_and_errors():
    z1 = randn(5, 4, seed=5).requires_grad_()
    z2 = randn(5, 4, seed=6).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: vicreg_loss(a, b, 25.0, 25.0, 1.0), (z1, z2))
    with pytest.raises(ValueError, match="at least 2"):
        vicreg_loss(torch.ones(1, 3), torch.ones(1, 3))
    with pytest.raises(ValueError, match="one shape"):
        vicreg_loss(torch.ones(4, 3), torch.ones(4, 2))


# ------------------------------------------------------------------ MoCo v3

def loop_mocov3(q, k, tau, offset):
    total = 0.0
    for i in range(q.shape[0]):
        u = q[i] / q[i].norm()
        s = [float(u @ (k[m] / k[m].norm())) / tau for m in range(k.shape[0])]
        total += -s[offset + i] + math.log(sum(math.exp(v) for v in s))
    return 2 * tau * total / q.shape[0]


@pytest.mark.parametrize("tau", [0.1, 0.2, 1.0])
@pytest.mark.parametrize("offset", [0, 3])
def test_mocov3_matches_loop(tau, offset):
    q, k = randn(4, 6, seed=7), randn(9, 6, seed=8)
    assert mocov3_loss(q, k, tau, offset).item() == pytest.approx(loop_mocov3(q, k, tau, offset), rel=1e-12)


def test_mocov3_hand_case_invariance_and_gradcheck():
    # Two orthogonal keys, queries equal to their keys: l = -1/tau + log(e^{1/tau} + 1).
    k = torch.eye(2)
    tau = 0.5
    want = 2 * tau * (-2.0 + math.log(math.exp(2.0) + 1.0))
    assert mocov3_loss(3 * k, k, tau).item() == pytest.approx(want)
    q, keys = randn(3, 4, seed=9), randn(6, 4, seed=10)
    assert mocov3_loss(2.5 * q, 0.1 * keys, 0.2, 2).item() == pytest.approx(mocov3_loss(q, keys, 0.2, 2).item())
    q.requires_grad_()
    keys.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: mocov3_loss(a, b, 0.3, 1), (q, keys))


def test_mocov3_errors():
    with pytest.raises(ValueError, match="within"):
        mocov3_loss(torch.ones(3, 2), torch.ones(4, 2), 0.2, offset=2)
    with pytest.raises(ValueError, match="temperature"):
        mocov3_loss(torch.ones(3, 2), torch.ones(3, 2), 0.0)
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        mocov3_loss(torch.ones(3, 2), torch.ones(3, 5))


# ------------------------------------------------------------------ DINO

def loop_dino(student, teacher, center, ts, tt):
    def softmax(row, t):
        m = max(row)
        e = [math.exp((v - m) / t) for v in row]
        return [v / sum(e) for v in e]

    terms = []
    for v in range(len(student)):
        for g in (0, 1):
            if v == g:
                continue
            h = 0.0
            for i in range(student[v].shape[0]):
                p_t = softmax([float(a - c) for a, c in zip(teacher[g][i], center)], tt)
                p_s = softmax([float(a) for a in student[v][i]], ts)
                h += -sum(a * math.log(b) for a, b in zip(p_t, p_s))
            terms.append(h / student[v].shape[0])
    return sum(terms) / len(terms)


@pytest.mark.parametrize("views", [2, 4])
@pytest.mark.parametrize("temps", [(0.1, 0.04), (0.5, 0.07)])
def test_dino_matches_loop(views, temps):
    student = [randn(3, 5, seed=20 + v) for v in range(views)]
    teacher = [randn(3, 5, seed=30 + g) for g in range(2)]
    center = 0.3 * randn(5, seed=40)
    got = dino_loss(student, teacher, center, *temps).item()
    assert got == pytest.approx(loop_dino(student, teacher, center, *temps), rel=1e-10)


def test_dino_hand_case_centering_and_gradcheck():
    # Uniform student, any teacher: H = log K for every pair.
    student = [torch.zeros(2, 4)] * 3
    teacher = [randn(2, 4, seed=1), randn(2, 4, seed=2)]
    assert dino_loss(student, teacher, torch.zeros(4)).item() == pytest.approx(math.log(4))
    # A constant shift of the teacher row (or of the centre) does not change the softmax target.
    s = [randn(3, 6, seed=s) for s in (3, 4)]
    t = [randn(3, 6, seed=s) for s in (5, 6)]
    c = randn(6, seed=7)
    base = dino_loss(s, t, c).item()
    assert dino_loss(s, [x + 2.0 for x in t], c).item() == pytest.approx(base)
    assert dino_loss(s, t, c.view(1, -1) - 1.0).item() == pytest.approx(base)
    assert dino_loss(s, t, c + randn(6, seed=8)).item() != pytest.approx(base)  # the centre matters
    # Gradient: the student only (the teacher's targets are constants for the student's gradient check).
    student = tuple(randn(2, 5, seed=seed).requires_grad_() for seed in (9, 10, 11))
    teacher = [randn(2, 5, seed=12), randn(2, 5, seed=13)]
    assert torch.autograd.gradcheck(lambda a, b, x: dino_loss([a, b, x], teacher, torch.zeros(5), 0.1, 0.04), student)


def test_dino_errors():
    with pytest.raises(ValueError, match="2 teacher"):
        dino_loss([torch.zeros(2, 3)] * 2, [torch.zeros(2, 3)], torch.zeros(3))
    with pytest.raises(ValueError, match="one shape"):
        dino_loss([torch.zeros(2, 3), torch.zeros(2, 4)], [torch.zeros(2, 3)] * 2, torch.zeros(3))
    with pytest.raises(ValueError, match="temperatures"):
        dino_loss([torch.zeros(2, 3)] * 2, [torch.zeros(2, 3)] * 2, torch.zeros(3), 0.0)

"""Reference losses in plain PyTorch: the normative maths (docs/losses.md).

Notation: a batch of N images, two views, embeddings z1, z2 of shape (N, d); Z = [z1; z2] has 2N
rows; u_k = Z_k / ||Z_k||; s_kl = u_k . u_l / tau; p(k) = (k + N) mod 2N is row k's positive.

These functions are the ground truth that the fused Triton kernels in ``kernels/`` are tested
against, so they favour clarity over speed (the 2N x 2N similarity matrix is materialised).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

CONTRASTIVE_VARIANTS = ("simclr", "decoupled")


def _similarities(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """S = U U^T / tau for U = normalise([z1; z2]); shape (2N, 2N)."""
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"z1 and z2 must be (N, d) of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    u = F.normalize(torch.cat([z1, z2]), dim=1)
    return u @ u.T / temperature


def _positive_index(n: int, device) -> torch.Tensor:
    return (torch.arange(2 * n, device=device) + n) % (2 * n)


def ntxent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2,
                variant: str = "simclr") -> torch.Tensor:
    r"""Normalised-temperature cross-entropy over the 2N rows of Z = [z1; z2].

    variant="simclr" (NT-Xent, SimCLR)::

        l_k = -s_{k,p(k)} + log \sum_{l != k} exp(s_kl)

    variant="decoupled" (the seed paper's cross-view L_con, DARe's default): the denominator runs
    over the other view only and leaves the positive out, D(k) = {l in other view, l != p(k)}::

        l_k = -s_{k,p(k)} + log \sum_{l in D(k)} exp(s_kl)        (needs N >= 2)

    Returns L = mean_k l_k over all 2N rows (both directions: the symmetric mean).
    """
    if variant not in CONTRASTIVE_VARIANTS:
        raise ValueError(f"variant must be one of {CONTRASTIVE_VARIANTS}, got {variant!r}")
    n = z1.shape[0]
    if variant == "decoupled" and n < 2:
        raise ValueError("the decoupled variant needs N >= 2 (its denominator is empty for N = 1)")
    s = _similarities(z1, z2, temperature)
    rows = torch.arange(2 * n, device=s.device)
    pos = _positive_index(n, s.device)
    if variant == "simclr":
        excluded = rows[:, None] == rows[None, :]
    else:
        view = rows // n
        excluded = (view[:, None] == view[None, :]) | (rows[None, :] == pos[:, None])
    lse = torch.logsumexp(s.masked_fill(excluded, float("-inf")), dim=1)
    return (lse - s[rows, pos]).mean()


def supcon_loss(z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor,
                temperature: float = 0.1) -> torch.Tensor:
    r"""Supervised contrastive loss (Khosla et al., "L_out" form) over Z = [z1; z2].

    With P(k) = {l != k : y_l = y_k} (the other view of the same image is always in P(k))::

        l_k = -(1/|P(k)|) \sum_{p in P(k)} s_kp + log \sum_{l != k} exp(s_kl)

    Returns mean_k l_k. Images that share a label are positives of each other, whatever their
    index: duplicated labels (two copies of one image, say) simply enlarge P(k), and each positive
    weighs 1/|P(k)| (so a duplicated image counts like any other same-class image, not double).
    An anchor without positives cannot occur: with two views, P(k) always holds k's other view.
    """
    n = z1.shape[0]
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    s = _similarities(z1, z2, temperature)
    y = torch.cat([labels, labels])
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=s.device)
    positives = (y[:, None] == y[None, :]) & ~self_mask
    lse = torch.logsumexp(s.masked_fill(self_mask, float("-inf")), dim=1)
    mean_pos = (s * positives).sum(1) / positives.sum(1)
    return (lse - mean_pos).mean()


def multipositive_loss(zs: list[torch.Tensor], temperature: float = 0.2,
                       labels: torch.Tensor | None = None) -> torch.Tensor:
    r"""Multi-positive contrastive loss over V >= 2 views of the same N images (multi-crop SimCLR/SupCon).

    Z = [z_0; z_1; ...; z_{V-1}] has V N rows; row k is view k // N of image i(k) = k mod N, and
    u_k, s_kl are as in the module docstring. Row k's group is g(k) = i(k) (``labels`` None: the
    self-supervised case, every view of an image is a positive) or g(k) = labels[i(k)] (SupCon: every
    view of every same-class image). With P(k) = {l != k : g(l) = g(k)}::

        l_k = -(1/|P(k)|) \sum_{p in P(k)} s_kp + log \sum_{l != k} exp(s_kl),    L = mean_k l_k

    the SupCon "L_out" form: each positive weighs 1/|P(k)| and the denominator runs over all the
    other V N - 1 rows (P(k) always holds the V - 1 other views of k's image). With V = 2 it is
    ``ntxent_loss(z0, z1, variant="simclr")`` (labels None: P(k) = {p(k)}) and ``supcon_loss``
    (labels given). DARe's decoupled variant has no multi-view form here: DARe averages its two-view
    loss over view pairs instead (``fastssl.methods.dare``).
    """
    if len(zs) < 2:
        raise ValueError(f"need at least 2 views, got {len(zs)}")
    n = zs[0].shape[0]
    if any(z.shape != zs[0].shape or z.dim() != 2 for z in zs):
        raise ValueError(f"every view's embeddings must be (N, d) of one shape, got {[tuple(z.shape) for z in zs]}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if labels is not None and labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    group = (labels if labels is not None else torch.arange(n, device=zs[0].device)).repeat(len(zs))
    u = F.normalize(torch.cat(zs), dim=1)
    s = u @ u.T / temperature
    self_mask = torch.eye(s.shape[0], dtype=torch.bool, device=s.device)
    positives = (group[:, None] == group[None, :]) & ~self_mask
    lse = torch.logsumexp(s.masked_fill(self_mask, float("-inf")), dim=1)
    return (lse - (s * positives).sum(1) / positives.sum(1)).mean()


def contrastive_rows_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float, rows: torch.Tensor,
                          labels: torch.Tensor | None = None, variant: str = "simclr") -> torch.Tensor:
    r"""mean over the given ``rows`` k of Z = [z1; z2] of the per-row loss l_k of ``ntxent_loss``
    (``variant``) or, with ``labels``, of ``supcon_loss``: only those rows of S are formed, a
    (len(rows), 2N) block, each against all 2N columns. With every row once this equals the full
    loss; a data-parallel rank passes its own rows of the gathered batch, so no rank computes more
    than its rows' share (the mean over ranks of the rank means is the global loss).
    """
    if variant not in CONTRASTIVE_VARIANTS:
        raise ValueError(f"variant must be one of {CONTRASTIVE_VARIANTS}, got {variant!r}")
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"z1 and z2 must be (N, d) of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n = z1.shape[0]
    if labels is None and variant == "decoupled" and n < 2:
        raise ValueError("the decoupled variant needs N >= 2 (its denominator is empty for N = 1)")
    u = F.normalize(torch.cat([z1, z2]), dim=1)
    rows = rows.to(u.device)
    s = u[rows] @ u.T / temperature                               # (R, 2N)
    cols = torch.arange(2 * n, device=u.device)
    self_mask = rows[:, None] == cols[None, :]
    if labels is not None:
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
        y = torch.cat([labels, labels])
        positives = (y[rows][:, None] == y[None, :]) & ~self_mask
        lse = torch.logsumexp(s.masked_fill(self_mask, float("-inf")), dim=1)
        return (lse - (s * positives).sum(1) / positives.sum(1)).mean()
    pos = (rows + n) % (2 * n)
    if variant == "simclr":
        excluded = self_mask
    else:
        excluded = ((rows // n)[:, None] == (cols // n)[None, :]) | (cols[None, :] == pos[:, None])
    lse = torch.logsumexp(s.masked_fill(excluded, float("-inf")), dim=1)
    return (lse - s.gather(1, pos[:, None]).squeeze(1)).mean()


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
    """z = mu + exp(logvar / 2) * eps with eps ~ N(0, I) (drawn here when not given)."""
    if eps is None:
        eps = torch.randn_like(mu)
    return mu + torch.exp(0.5 * logvar) * eps


def gaussian_jsd(mu1: torch.Tensor, logvar1: torch.Tensor, mu2: torch.Tensor,
                 logvar2: torch.Tensor) -> torch.Tensor:
    r"""Jensen-Shannon divergence between N(mu1, diag s1) and N(mu2, diag s2), s = exp(logvar),
    with the mixture replaced by the moment-matched Gaussian M = N((mu1 + mu2)/2, v),
    v = (s1 + s2)/2. Per dimension::

        JSD = 1/2 KL(P||M) + 1/2 KL(Q||M) = (mu1 - mu2)^2 / (8 v) + 1/2 ln v - 1/4 (ln s1 + ln s2)

    summed over dimensions and averaged over the batch. It is >= 0 and 0 iff the Gaussians are equal.
    """
    log_v = torch.logaddexp(logvar1, logvar2) - math.log(2.0)  # ln((s1 + s2) / 2), stable
    per_dim = (mu1 - mu2).pow(2) * torch.exp(-log_v) / 8 + 0.5 * log_v - 0.25 * (logvar1 + logvar2)
    return per_dim.sum(dim=-1).mean()


# --------------------------------------------------------------------------------------------
# Non-contrastive and metric-learning losses (Barlow Twins, SimSiam, BYOL, Triplet)
# --------------------------------------------------------------------------------------------

BARLOW_EPS = 1e-5
TRIPLET_MINING = ("semihard", "batch_hard")


def _check_pair(a: torch.Tensor, b: torch.Tensor, names: str) -> None:
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"{names} must be (N, d) of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 0.0051) -> torch.Tensor:
    r"""Barlow Twins redundancy-reduction loss (Zbontar et al. 2021).

    Each embedding dimension is standardised over the batch like a BatchNorm without affine in
    training mode (biased variance, eps = 1e-5, as in the official code)::

        z~ = (z - mean_batch(z)) / sqrt(var_batch(z) + 1e-5)
        C = z~1^T z~2 / N                                            (D x D)
        L = sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2

    Returns a scalar (not averaged over dimensions, as in the paper). Needs N >= 2.
    """
    _check_pair(z1, z2, "z1 and z2")
    n = z1.shape[0]
    if n < 2:
        raise ValueError("barlow_twins_loss needs a batch of at least 2 (it standardises over the batch)")

    def standardise(z):
        return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + BARLOW_EPS)

    c = standardise(z1).T @ standardise(z2) / n
    diag = torch.diagonal(c)
    on_diag = (1 - diag).pow(2).sum()
    off_diag = c.pow(2).sum() - diag.pow(2).sum()
    return on_diag + lambd * off_diag


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam's D(p, z) = -cos(p, z), averaged over the batch; in [-1, 1].

    No stop-gradient here: the caller detaches z (SimSiam: 1/2 D(p1, sg(z2)) + 1/2 D(p2, sg(z1))).
    """
    _check_pair(p, z, "p and z")
    return -F.cosine_similarity(p, z, dim=1).mean()


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's regression loss ||p/|p| - z/|z| ||^2 = 2 - 2 cos(p, z), averaged over the batch; in [0, 4].

    No stop-gradient here: the caller passes the target network's (detached) projection as z.
    """
    _check_pair(p, z, "p and z")
    return (2 - 2 * F.cosine_similarity(p, z, dim=1)).mean()


def triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.2,
                 mining: str = "semihard") -> torch.Tensor:
    r"""Triplet margin loss (FaceNet) with in-batch mining, on L2-normalised embeddings.

    ``embeddings`` (M, d) are normalised here, e = x / ||x||, and compared by squared Euclidean
    distance d(a, b) = ||e_a - e_b||^2 = 2 - 2 e_a . e_b (in [0, 4]). Positives of an anchor a are
    the other rows with its label; negatives are the rows with another label. A two-view batch is
    passed as ``embeddings = [e1; e2]``, ``labels = [y; y]``, so both views of an image are
    positives of each other (as are all other same-class images)::

        l(a, p, n) = max(0, d(a, p) - d(a, n) + margin)

    mining="semihard" (FaceNet, the default): one term per anchor-positive pair (a, p), a != p.
    Its negative is the closest semi-hard one, n in {d(a, p) < d(a, n) < d(a, p) + margin};
    when there is none, the hardest negative (smallest d(a, n)), which gives loss 0 if every
    negative is already at least ``margin`` farther than p. L = mean over all pairs (a, p).

    mining="batch_hard" (Hermans et al. 2017): one term per anchor, with its farthest positive
    and its closest negative. L = mean over anchors.

    Ties: the semi-hard window is open at both ends (d(a, n) == d(a, p) counts as hard, and
    d(a, n) == d(a, p) + margin gives loss 0 either way). Tied candidate distances give the same
    loss value whichever is picked; the gradient is then shared equally among the tied rows
    (``amin``/``amax`` semantics), so the result does not depend on row order.
    Anchors (or pairs) without any negative contribute nothing; if no term remains (a batch of
    a single class, or no positive pair) the loss is 0, still connected to the graph.
    """
    if mining not in TRIPLET_MINING:
        raise ValueError(f"mining must be one of {TRIPLET_MINING}, got {mining!r}")
    if embeddings.dim() != 2 or labels.shape != embeddings.shape[:1]:
        raise ValueError(f"embeddings must be (M, d) and labels (M,), got {tuple(embeddings.shape)} "
                         f"and {tuple(labels.shape)}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    e = F.normalize(embeddings, dim=1)
    dist = (2 - 2 * (e @ e.T)).clamp_min(0)
    m = e.shape[0]
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(m, dtype=torch.bool, device=e.device)
    pos_mask, neg_mask = same & ~eye, ~same
    has_neg = neg_mask.any(1)
    # Fixed shapes and no data-dependent branches (one torch.compile graph): every candidate term is
    # computed, invalid ones are masked out, and the mean divides by max(count, 1), so an empty batch
    # gives 0, still connected to the graph.

    if mining == "batch_hard":
        valid = has_neg & pos_mask.any(1)
        hardest_pos = dist.masked_fill(~pos_mask, float("-inf")).amax(1)
        hardest_neg = dist.masked_fill(~neg_mask, float("inf")).amin(1)
        terms = torch.where(valid, F.relu(hardest_pos - hardest_neg + margin), 0.0)
        return terms.sum() / valid.sum().clamp_min(1)

    # Semi-hard, as an (M, M) search instead of an (M, M, M) mask: sort each anchor's negative
    # distances (non-negatives last, at +inf); for the pair (a, p) the closest semi-hard negative is the
    # first sorted one > d(a, p) (searchsorted), if it is < d(a, p) + margin; else the hardest, sorted[0].
    valid = pos_mask & has_neg[:, None]                              # (a, p) terms
    neg_sorted = dist.masked_fill(~neg_mask, float("inf")).sort(dim=1).values
    d_ap = dist.detach().contiguous()
    first_above = torch.searchsorted(neg_sorted.detach(), d_ap, right=True).clamp_max(m - 1)
    above = neg_sorted.detach().gather(1, first_above)
    semihard = (above > d_ap) & (above < d_ap + margin)
    chosen = torch.where(semihard, above, neg_sorted.detach()[:, :1])  # the negative distance of (a, p)
    # Its gradient is shared equally among tied negatives (amin semantics): the mean of the sorted run
    # [lo, hi) equal to it, from prefix sums (whose value is replaced by the exact one).
    lo = torch.searchsorted(neg_sorted.detach(), chosen, right=False)
    hi = torch.searchsorted(neg_sorted.detach(), chosen, right=True)
    finite = neg_sorted.masked_fill(torch.isinf(neg_sorted), 0.0)
    prefix = F.pad(finite.cumsum(1), (1, 0))
    run_mean = (prefix.gather(1, hi) - prefix.gather(1, lo)) / (hi - lo).clamp_min(1)
    d_neg = chosen + (run_mean - run_mean.detach())
    terms = torch.where(valid, F.relu(dist - d_neg + margin), 0.0)
    return terms.sum() / valid.sum().clamp_min(1)


# --------------------------------------------------------------------------------------------
# VICReg, MoCo v3 and DINO
# --------------------------------------------------------------------------------------------

VICREG_EPS = 1e-4


def vicreg_loss(z1: torch.Tensor, z2: torch.Tensor, sim_weight: float = 25.0, var_weight: float = 25.0,
                cov_weight: float = 1.0, gamma: float = 1.0) -> torch.Tensor:
    r"""VICReg (Bardes et al. 2022): invariance, variance and covariance terms on (N, d) embeddings.

    With s_j(z) = sqrt(Var_j(z) + 1e-4) the per-dimension standard deviation over the batch (unbiased
    variance) and Cov(z) = (z - mean)^T (z - mean) / (N - 1)::

        inv = (1 / (N d)) sum_{n, j} (z1_nj - z2_nj)^2                              (the MSE)
        var = (1 / d) sum_j max(0, gamma - s_j(z1)) + (1 / d) sum_j max(0, gamma - s_j(z2))
        cov = (1 / d) sum_{i != j} Cov(z1)_ij^2 + (1 / d) sum_{i != j} Cov(z2)_ij^2
        L = sim_weight * inv + var_weight * var + cov_weight * cov

    as in the paper's Algorithm 1 (and solo-learn; the official repository halves the variance term).
    Defaults 25 / 25 / 1 and gamma = 1 are the published ones. Needs N >= 2.
    """
    _check_pair(z1, z2, "z1 and z2")
    n, d = z1.shape
    if n < 2:
        raise ValueError("vicreg_loss needs a batch of at least 2 (variance and covariance are over the batch)")
    invariance = F.mse_loss(z1, z2)

    def variance(z):
        return F.relu(gamma - torch.sqrt(z.var(0) + VICREG_EPS)).mean()

    def covariance(z):
        zc = z - z.mean(0)
        c = zc.T @ zc / (n - 1)
        return (c.pow(2).sum() - torch.diagonal(c).pow(2).sum()) / d

    return (sim_weight * invariance + var_weight * (variance(z1) + variance(z2))
            + cov_weight * (covariance(z1) + covariance(z2)))


def mocov3_loss(q: torch.Tensor, k: torch.Tensor, temperature: float = 0.2, offset: int = 0) -> torch.Tensor:
    r"""MoCo v3's contrastive term ctr(q, k) for n queries against M >= n keys (Chen, Xie, He 2021).

    u = q / ||q||, w = k / ||k||; query i's positive is key offset + i (its own image: a data-parallel
    rank passes its local queries, the keys of every rank and offset = rank * n), every other key is a
    negative::

        l_i = -u_i . w_{offset+i} / tau + log sum_m exp(u_i . w_m / tau)
        ctr(q, k) = 2 tau * mean_i l_i

    (the cross-entropy of the (n, M) logits with the diagonal as targets, scaled by 2 tau as in the
    official code). No stop-gradient here: the caller passes the momentum encoder's detached keys.
    MoCo v3's loss is the symmetric sum ctr(q1, k2) + ctr(q2, k1).
    """
    if q.dim() != 2 or k.dim() != 2 or q.shape[1] != k.shape[1]:
        raise ValueError(f"q and k must be (n, d) and (M, d), got {tuple(q.shape)} and {tuple(k.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n = q.shape[0]
    if not 0 <= offset <= k.shape[0] - n:
        raise ValueError(f"the positives (keys {offset}..{offset + n - 1}) must lie within the {k.shape[0]} keys")
    logits = F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / temperature
    targets = torch.arange(offset, offset + n, device=q.device)
    return 2 * temperature * F.cross_entropy(logits, targets)


def dino_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], center: torch.Tensor,
              student_temp: float = 0.1, teacher_temp: float | torch.Tensor = 0.04) -> torch.Tensor:
    r"""DINO's self-distillation cross-entropy (Caron et al. 2021) on prototype logits.

    ``student``: V >= 2 tensors (n, K) of student logits, views 0 and 1 global; ``teacher``: the teacher
    logits (n, K) of the 2 global views (no stop-gradient here: the caller detaches them); ``center``
    (K,) or (1, K). The teacher is centred and sharpened, the student tempered::

        P_t(g) = softmax((t_g - center) / teacher_temp),   log P_s(v) = log_softmax(s_v / student_temp)
        H(g, v) = mean over the batch of -sum_K P_t(g) log P_s(v)
        L = mean over the ordered pairs (v, g), g global, v != g, of H(g, v)

    (every student view against every other teacher global view: 2 pairs for two views,
    2 + 2 (V - 2) with V - 2 local views).
    """
    if len(teacher) != 2 or len(student) < 2:
        raise ValueError(f"need 2 teacher (global) views and at least 2 student views, got {len(teacher)} and "
                         f"{len(student)}")
    shape = teacher[0].shape
    if any(t.shape != shape or t.dim() != 2 for t in [*teacher, *student]):
        raise ValueError(f"every logits tensor must be (n, K) of one shape, got "
                         f"{[tuple(t.shape) for t in [*teacher, *student]]}")
    # A 0-d tensor temperature (DINO's scheduled teacher temperature, a buffer) is not checked: a compiled step
    # reads it without a data-dependent branch (the method checks its options instead).
    if any(not isinstance(t, torch.Tensor) and t <= 0 for t in (student_temp, teacher_temp)):
        raise ValueError(f"temperatures must be > 0, got {student_temp} and {teacher_temp}")
    targets = [F.softmax((t - center) / teacher_temp, dim=-1) for t in teacher]
    log_probs = [F.log_softmax(s / student_temp, dim=-1) for s in student]
    pairs = [(v, g) for v in range(len(student)) for g in (0, 1) if v != g]
    terms = [-(targets[g] * log_probs[v]).sum(-1).mean() for v, g in pairs]
    return sum(terms) / len(terms)

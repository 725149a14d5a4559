"""Top-K soft targets for many classes: each example keeps its teacher's K most probable classes at T and the log
of the mass left over, so a cache of N examples costs N·(2K + 1) numbers instead of N·C.

The loss then compares the two distributions on K + 1 bins, the kept classes and "the rest":

    L_K = T² · [ Σ_{i∈K} p_i (log p_i − log q_i) + R (log R − log Σ_{j∉K} q_j) ],   R = 1 − Σ_{i∈K} p_i

with p = softmax(v / T) the teacher's and q = softmax(z / T) the student's. What it leaves out, exactly:

    L_dense − L_K = T² · R · KL(p_rest / R ‖ q_rest / Q_rest) ≥ 0      (the chain rule of KL)

and its gradient is the dense one with the teacher's rest mass spread over the rest classes in the student's own
proportions, so per example ``‖∇_z L_dense − ∇_z L_K‖₁ ≤ 2 · T · R``: small when the teacher puts little mass
outside its top K (R is stored, so the bound is known for every example).

Why "the rest" is one bin and not spread evenly over the other C − K classes: on the 1,000-class benchmark
(``benchmarks/many_classes.py``, K = 20, 3 seeds) the even spread gave students 0.52 points worse than this loss
(0.7710 against 0.7763 mean test accuracy): it tells the student that every unlikely class is equally unlikely,
which the teacher never said.

**A sampled tail** (``student.cache.rest_samples: S``) supplies the term L_K leaves out, without storing the rest.
Each example also keeps S classes drawn from the teacher's rest distribution p_rest / R and that distribution's
entropy H_rest; the loss adds

    T² · R · [ −(1/S) Σ_s log(q_{j_s} / Q_rest) − H_rest ]

whose expectation over the draws is exactly the left-out T² · R · KL(p_rest / R ‖ q_rest / Q_rest). The loss is then
an unbiased estimate of L_dense, in value and gradient (as in Anshumann et al., 2025, "Sparse Logit Sampling"). The
draws are systematic: one offset per example, then S evenly spaced points of the rest's cumulative distribution, so
a class holding a share s of the rest is drawn ⌊S·s⌋ or ⌈S·s⌉ times (lower variance than independent draws) and
the offset is a function of the sample id only, so the same example gets the same draws however the cache is split
into batches or shards. On the 1,000-class benchmark (K = 20, S = 20, T = 2, 6 seeds; BENCHMARKS §9) the student
ended 0.14 ± 0.50 points below the dense one, against 0.69 ± 0.40 for the one-bin loss, for a cache 1.5x larger.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ensemble.training.teacher import TeacherOutputs


@dataclass
class TopK:
    indices: torch.Tensor  # (N, K) int64: the teacher's K most probable classes at T
    log_probs: torch.Tensor  # (N, K) their log-probabilities at T
    rest_log_mass: torch.Tensor  # (N,) log of the mass outside them (−inf when there is none)
    rest_samples: torch.Tensor | None = None  # (N, S) int64: classes drawn from the rest, p_rest / R
    rest_entropy: torch.Tensor | None = None  # (N,) entropy of p_rest / R (nats)

    def _map(self, fn) -> "TopK":
        return TopK(*(None if t is None else fn(t) for t in (self.indices, self.log_probs, self.rest_log_mass,
                                                              self.rest_samples, self.rest_entropy)))

    def __getitem__(self, rows) -> "TopK":
        return self._map(lambda t: t[rows])

    def to(self, device) -> "TopK":
        return self._map(lambda t: t.to(device))

    @property
    def rest_mass(self) -> torch.Tensor:
        return self.rest_log_mass.exp()


@dataclass
class TopKOutputs(TeacherOutputs):
    """A teacher's targets kept as top-K (``student.cache.top_k``): ``top`` instead of the dense ``probs``. The
    core's :class:`TeacherOutputs` knows nothing of them; this is distill's own kind of target."""

    top: TopK | None = None


def top_of(targets: TeacherOutputs) -> TopK | None:
    """The top-K targets ``targets`` carries, or None when they are dense."""
    return targets.top if isinstance(targets, TopKOutputs) else None


def top_k(probs: torch.Tensor, k: int, rest_samples: int = 0, first_row: int = 0) -> TopK:
    """The K largest of each row of ``probs`` (soft targets at T) and the log of the rest of the row's mass; with
    ``rest_samples`` S, also S systematic draws from each row's rest and its entropy (rows are sample ids
    ``first_row``, ``first_row + 1``, ...: they fix the draws' offsets)."""
    values, indices = probs.topk(min(k, probs.shape[1]), dim=1)
    # With every class kept the rest is empty: exactly zero, not the rounding error of 1 − Σ.
    rest = (1 - values.sum(dim=1)).clamp_min(0) if k < probs.shape[1] else torch.zeros_like(values[:, 0])
    top = TopK(indices, torch.log(values.clamp_min(1e-45)), torch.log(rest))
    if rest_samples:
        rest_probs = probs.double().scatter(1, indices, 0.0)
        top.rest_samples = systematic_draws(rest_probs, rest_samples, first_row)
        shares = rest_probs / rest_probs.sum(dim=1, keepdim=True).clamp_min(1e-300)
        top.rest_entropy = -torch.special.xlogy(shares, shares).sum(dim=1).to(probs.dtype)
    return top


GOLDEN = (5**0.5 - 1) / 2


def systematic_draws(weights: torch.Tensor, count: int, first_row: int = 0) -> torch.Tensor:
    """``count`` classes per row, drawn with probability proportional to ``weights`` (N x C, non-negative): the
    points (u + s) / count, s = 0..count−1, of each row's cumulative distribution, with u the fractional part of
    row_id · golden ratio (evenly spread offsets, a function of the row's id only). A row of zeros draws class 0."""
    cumulative = weights.double().cumsum(dim=1)
    rows = torch.arange(first_row, first_row + len(weights), dtype=torch.float64)
    offsets = torch.frac(rows * GOLDEN)
    points = (offsets[:, None] + torch.arange(count, dtype=torch.float64)) / count * cumulative[:, -1:]
    drawn = torch.searchsorted(cumulative, points, right=True)
    return drawn.clamp_max(weights.shape[1] - 1).where(cumulative[:, -1:] > 0, 0)


def topk_soft_target_kl(student_logits: torch.Tensor, targets: TopK, temperature: float) -> torch.Tensor:
    """``L_K`` above, batch mean: ``T² · KL`` on the teacher's top-K classes plus one bin for the rest; with
    sampled rest classes, plus their estimate of the rest's own KL (an unbiased estimate of the dense loss)."""
    log_q = torch.log_softmax(student_logits / temperature, dim=1)
    log_q_top = log_q.gather(1, targets.indices)
    kept = torch.zeros_like(log_q, dtype=torch.bool).scatter_(1, targets.indices, True)
    log_q_rest = torch.logsumexp(log_q.masked_fill(kept, float("-inf")), dim=1)
    p_top = targets.log_probs.exp()
    top_terms = (p_top * (targets.log_probs - log_q_top)).sum(dim=1)
    rest = targets.rest_log_mass.exp()
    rest_kl = targets.rest_log_mass - log_q_rest
    if targets.rest_samples is not None:
        # −(1/S) Σ log(q_j / Q_rest) − H_rest: the draws' estimate of KL(p_rest / R ‖ q_rest / Q_rest)
        rest_kl = rest_kl - (log_q.gather(1, targets.rest_samples) - log_q_rest[:, None]).mean(dim=1) \
            - targets.rest_entropy
    rest_term = torch.where(rest > 0, rest * rest_kl, torch.zeros_like(rest))
    return temperature**2 * (top_terms + rest_term).mean()

"""The paper's analyses as pure numpy functions of logs, curves and budget tables (the analyses, budget and run_config
stages apply them).

- Sample efficiency (the paper: DiverseGRPO reaches Flow-GRPO's final quality in fewer iterations): the first
  evaluation at which a run's reward reaches the baseline's final reward.
- Replicator dynamics (the paper's explanation of collapse): GRPO moves the share w_k of each mode k as
  dw_k/dt = eta w_k (r_k - sum_j w_j r_j), r_k the mean reward of mode k's rollouts. One eta is fitted to
  the measured shares from the measured start and the measured rewards; R^2 says how much of the shares'
  movement the equation explains.
- Diversity budget per denoising step: the share of a model's diversity that the first j noise draws decide, and
  the adaptive K taken from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ETA_GRID = np.logspace(-2, 4, 121)  # learning rates tried before refinement; shares move within [1e-2, 1e4]
_GOLDEN = (math.sqrt(5) - 1) / 2


def first_reaching(iterations: np.ndarray, values: np.ndarray, target: float) -> float:
    """The first of (T,) `iterations` whose (T,) value is at least `target`; NaN when none is."""
    reached = np.nonzero(np.asarray(values) >= target)[0]
    return float(np.asarray(iterations)[reached[0]]) if len(reached) else math.nan


def replicator_trajectory(w0: np.ndarray, rewards: np.ndarray, eta: float) -> np.ndarray:
    """(T + 1, K) mode shares from the (K,) start `w0` under (T, K) per-iteration mode rewards, by the
    replicator equation's Euler step w_{t+1} = w_t + eta w_t (r_t - <w_t, r_t>), which keeps the sum. A NaN
    reward (no rollout of that mode in the iteration) pulls neither way: it counts as the mean. A share the
    step would make negative is cut at 0 and the others renormalised."""
    w0 = np.asarray(w0, dtype=float)
    w = w0 / w0.sum() if w0.sum() > 0 else np.full_like(w0, 1 / len(w0))  # no mode seen: no information
    out = [w]
    for r in np.asarray(rewards, dtype=float):  # (K,)
        mean = float(np.sum(w[~np.isnan(r)] * r[~np.isnan(r)]) / max(np.sum(w[~np.isnan(r)]), 1e-12))
        r = np.where(np.isnan(r), mean, r)
        w = np.clip(w + eta * w * (r - np.dot(w, r)), 0.0, None)
        w = w / w.sum() if w.sum() > 0 else np.full_like(w, 1 / len(w))
        out.append(w)
    return np.stack(out)


def r_squared(measured: np.ndarray, predicted: np.ndarray) -> float:
    """1 - SSE / SST over every (iteration, mode) entry; SST around each mode's own mean share."""
    measured, predicted = np.asarray(measured, float), np.asarray(predicted, float)
    total = np.sum((measured - measured.mean(axis=0)) ** 2)
    return float(1 - np.sum((measured - predicted) ** 2) / total) if total > 0 else math.nan


@dataclass
class ReplicatorFit:
    eta: float  # the fitted learning rate of the shares
    r2: float  # of the predicted shares against the measured ones
    predicted: np.ndarray  # (T + 1, K)


def fit_replicator(shares: np.ndarray, rewards: np.ndarray, grid: np.ndarray = ETA_GRID) -> ReplicatorFit:
    """One eta >= 0 for measured (T + 1, K) `shares` under (T, K) `rewards`, by least squares from the measured
    start: the best of a log-spaced grid (and eta = 0), then golden-section search between its neighbours."""
    shares = np.asarray(shares, dtype=float)

    def sse(eta: float) -> float:
        return float(np.sum((replicator_trajectory(shares[0], rewards, eta) - shares) ** 2))

    candidates = np.concatenate([[0.0], grid])
    errors = [sse(eta) for eta in candidates]
    best = int(np.argmin(errors))
    lo, hi = candidates[max(best - 1, 0)], candidates[min(best + 1, len(candidates) - 1)]
    a, b = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    error_a, error_b = sse(a), sse(b)
    while hi - lo > 1e-9 * max(hi, 1e-12):  # one new trajectory per step: the kept point's error is known
        if error_a < error_b:
            hi, b, error_b = b, a, error_a
            a = hi - _GOLDEN * (hi - lo)
            error_a = sse(a)
        else:
            lo, a, error_a = a, b, error_b
            b = lo + _GOLDEN * (hi - lo)
            error_b = sse(b)
    eta = min((candidates[best], (lo + hi) / 2), key=sse)
    predicted = replicator_trajectory(shares[0], rewards, eta)
    return ReplicatorFit(eta=float(eta), r2=r_squared(shares, predicted), predicted=predicted)


def diversity_budget(diversity: np.ndarray) -> np.ndarray:
    """(..., J) share of the diversity decided by the first j noise draws, 1 - D(j) / D(0), from (..., J) the
    diversity D(j) of samples that share the first j draws (sampling.branched_samples; D(0): nothing shared). NaN
    where D(0) is 0: there is nothing to decide."""
    diversity = np.asarray(diversity, dtype=float)
    start = diversity[..., :1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(start > 0, 1 - diversity / start, np.nan)


def steps_deciding(budget: np.ndarray, share: float, max_steps: int) -> int:
    """K, the fewest denoising steps whose noise decides `share` of the diversity together with the initial noise,
    from (J,) the budget by shared draws j (diversity_budget: j = 1 the initial noise alone, j = K + 1 it and the
    first K steps' noise). At least 1; `max_steps` when even those decide less."""
    budget = np.asarray(budget, dtype=float)
    return next((k for k in range(1, max_steps) if k + 1 < len(budget) and budget[k + 1] >= share), max_steps)

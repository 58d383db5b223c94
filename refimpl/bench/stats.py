"""Uncertainty of measured metrics: seed spread, bootstrap intervals and paired comparisons.

A record may carry `per_example`: the raw per-test-example quantities its metric is aggregated
from (digits: `correct` 0/1 per test image; perplexity: `nll_sum` and `tokens` per evaluation
window; MiniLM: per held-out sentence, each layer's squared output error and squared output norm,
and the embedding cosine; DDPM: none, its Fréchet distance is a set statistic and its noise comes
from seeds).
From those, a paired bootstrap over examples gives an interval for the difference between two
cells measured on the same examples; several seeds of one cell give a t-interval of the mean.
An ordering is claimed only when every available interval of the difference excludes zero.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

N_BOOT = 2000
LEVEL = 0.95
BOOT_SEED = 0

# two-sided 97.5% quantiles of Student's t for small degrees of freedom (df >= 31: normal)
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
         10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def t975(df: int) -> float:
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if df > 30:
        return 1.96
    return _T975.get(df) or _T975[max(k for k in _T975 if k <= df)]


# Each statistic takes index arrays of any shape [..., n] and reduces the last axis, so that all
# bootstrap resamples are computed in one vectorised call.
def _accuracy(ex: dict, idx: np.ndarray):
    return np.asarray(ex["correct"], dtype=float)[idx].mean(-1)


def _nll(ex: dict, idx: np.ndarray):
    return np.asarray(ex["nll_sum"], dtype=float)[idx].sum(-1) / np.asarray(ex["tokens"], dtype=float)[idx].sum(-1)


def _ppl(ex: dict, idx: np.ndarray):
    return np.exp(_nll(ex, idx))


def _summed(ex: dict, key: str, idx: np.ndarray):
    """Σ over the resampled examples of a per-example quantity (scalar or vector per example)."""
    return np.asarray(ex[key], dtype=float)[idx].sum(axis=idx.ndim - 1)


def _layer_rel_err(ex: dict, idx: np.ndarray):
    # minilm-layers: the mean over layers of ‖Y − Ŷ‖/‖Y‖, each layer's norms summed over the sentences
    return np.sqrt(_summed(ex, "layer_err2", idx) / _summed(ex, "layer_ref2", idx)).mean(-1)


def _output_rel_err(ex: dict, idx: np.ndarray):
    return np.sqrt(_summed(ex, "out_err2", idx) / _summed(ex, "out_ref2", idx))


def _cosine(ex: dict, idx: np.ndarray):
    return np.asarray(ex["cosine"], dtype=float)[idx].mean(-1)


# metric name -> statistic of a resampled set of examples; only these metrics have per-example data
STATISTICS = {"accuracy": _accuracy, "nll": _nll, "ppl": _ppl,
              "layer_rel_err": _layer_rel_err, "output_rel_err": _output_rel_err, "cosine": _cosine}

# The values a metric can take. A t-interval over three seeds is symmetric and wide, so it can
# leave them (accuracy 0.985 ± 0.024 reaches 1.009; a perplexity's low end went below zero);
# the true mean lies inside them, so cutting the interval there keeps its 95% coverage.
RANGES = {"accuracy": (0.0, 1.0), "cosine": (-1.0, 1.0), "ppl": (1.0, math.inf), "nll": (0.0, math.inf),
          "layer_rel_err": (0.0, math.inf), "output_rel_err": (0.0, math.inf),
          "digits_fd": (0.0, math.inf), "sample_rmse_fp": (0.0, math.inf)}
UNBOUNDED = (-math.inf, math.inf)


def n_examples(ex: dict) -> int:
    lengths = {len(v) for v in ex.values()}
    if len(lengths) != 1:
        raise ValueError(f"per_example fields differ in length: { {k: len(v) for k, v in ex.items()} }")
    return lengths.pop()


def _indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_ci(ex: dict, metric: str, n_boot: int = N_BOOT, seed: int = BOOT_SEED,
                 level: float = LEVEL) -> tuple[float, float]:
    """Percentile bootstrap interval of `metric` over the test examples of one record."""
    return mean_bootstrap_ci([ex], metric, n_boot, seed, level)


def mean_bootstrap_ci(exs: list[dict], metric: str, n_boot: int = N_BOOT, seed: int = BOOT_SEED,
                      level: float = LEVEL) -> tuple[float, float]:
    """Bootstrap interval of the seed-averaged `metric`, resampling the (shared) test examples."""
    stat = STATISTICS[metric]
    idx = _indices(n_examples(exs[0]), n_boot, seed)
    values = np.mean([stat(e, idx) for e in exs], axis=0)
    a = (1 - level) / 2
    return float(np.quantile(values, a)), float(np.quantile(values, 1 - a))


def paired_bootstrap(exs_a: list[dict], exs_b: list[dict], metric: str, n_boot: int = N_BOOT,
                     seed: int = BOOT_SEED, level: float = LEVEL) -> tuple[float, float, float]:
    """(difference a − b, low, high) of `metric`, resampling the same examples for both sides.

    exs_a[i] and exs_b[i] are the per-example data of seed i of each cell (same test examples);
    each resample averages the difference over the seeds, so example noise is what the interval
    measures. Seed noise is measured separately by `seed_interval`.
    """
    if len(exs_a) != len(exs_b) or not exs_a:
        raise ValueError("paired_bootstrap needs the same number (>= 1) of seeds on both sides")
    stat = STATISTICS[metric]
    n = n_examples(exs_a[0])
    if any(n_examples(e) != n for e in exs_a + exs_b):
        raise ValueError("paired_bootstrap needs both cells measured on the same examples")
    full = np.arange(n)
    diff = float(np.mean([stat(a, full) - stat(b, full) for a, b in zip(exs_a, exs_b)]))
    idx = _indices(n, n_boot, seed)
    diffs = np.mean([stat(a, idx) - stat(b, idx) for a, b in zip(exs_a, exs_b)], axis=0)
    q = (1 - level) / 2
    return diff, float(np.quantile(diffs, q)), float(np.quantile(diffs, 1 - q))


@dataclass(frozen=True)
class SeedSummary:
    n: int
    mean: float
    std: float          # sample standard deviation (0 for one seed)
    lo: float           # 95% t-interval of the mean (equal to mean for one seed)
    hi: float


def seed_summary(values: list[float], bounds: tuple[float, float] = UNBOUNDED) -> SeedSummary:
    """Mean, spread and 95% t-interval of the mean over seeds, the interval cut to `bounds`
    (the metric's `RANGES`; differences between two cells are unbounded)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        raise ValueError("seed_summary needs at least one value")
    mean = float(v.mean())
    if v.size == 1:
        return SeedSummary(1, mean, 0.0, mean, mean)
    std = float(v.std(ddof=1))
    half = t975(v.size - 1) * std / math.sqrt(v.size)
    return SeedSummary(int(v.size), mean, std, max(mean - half, bounds[0]), min(mean + half, bounds[1]))


@dataclass(frozen=True)
class Comparison:
    diff: float                 # a − b of the metric (mean over seeds)
    lo: float                   # the widest low end over the intervals available
    hi: float
    methods: tuple[str, ...]    # which intervals were used ("paired bootstrap", "seeds")
    verdict: str                # "better" | "worse" | "tie" (interval contains 0) | "unknown"


def seed_runs(recs: list[dict]) -> list[dict]:
    """The per-seed runs of a cell: each record's `seed_runs` (one record holds all its seeds),
    or the record itself for older records without them."""
    out = []
    for r in recs:
        out += r.get("seed_runs") or [{"seed": r.get("config", {}).get("seed", 0), "metrics": r["metrics"],
                                       **({"per_example": r["per_example"]} if r.get("per_example") else {})}]
    return out


def compare(recs_a: list[dict], recs_b: list[dict], metric: str, higher_is_better: bool) -> Comparison:
    """Compare two cells given their records (seeds paired by seed value where both have it).

    "better"/"worse" only when every available interval of the difference excludes zero
    on the same side; "unknown" when no interval can be computed (one seed, no per-example data).
    """
    a_runs, b_runs = seed_runs(recs_a), seed_runs(recs_b)
    b_by_seed = {r["seed"]: r for r in b_runs}
    pairs = [(a, b_by_seed[a["seed"]]) for a in a_runs if a["seed"] in b_by_seed]
    if not pairs:   # no common seed: compare the cells' means, unpaired
        pairs = list(zip(a_runs, b_runs))
    a_vals = [a["metrics"][metric] for a, _ in pairs]
    b_vals = [b["metrics"][metric] for _, b in pairs]
    diff = float(np.mean(a_vals) - np.mean(b_vals))
    intervals, methods = [], []
    exs_a = [a.get("per_example") for a, _ in pairs]
    exs_b = [b.get("per_example") for _, b in pairs]
    if metric in STATISTICS and all(exs_a) and all(exs_b):
        _, lo, hi = paired_bootstrap(exs_a, exs_b, metric)
        intervals.append((lo, hi))
        methods.append("paired bootstrap")
    if len(pairs) >= 3:
        s = seed_summary([x - y for x, y in zip(a_vals, b_vals)])
        intervals.append((s.lo, s.hi))
        methods.append("seeds")
    if not intervals:
        return Comparison(diff, math.nan, math.nan, (), "unknown")
    lo = min(i[0] for i in intervals)
    hi = max(i[1] for i in intervals)
    if lo > 0 or hi < 0:
        up = lo > 0
        verdict = "better" if up == higher_is_better else "worse"
    else:
        verdict = "tie"
    return Comparison(diff, lo, hi, tuple(methods), verdict)

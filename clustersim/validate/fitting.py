"""Fitting efficiency models to measured times, per (op kind, dtype), with numpy and scipy.

For each measured op the achieved efficiency is ``ideal_time / (measured - fixed_time)``
(clipped to [1e-4, 1.5]), with the ideal time and fixed time (launch overhead; on a CPU also
fresh output pages) of the device model the profile is relative to. ``log(efficiency)`` is modelled over shape features
(``clustersim.hardware.calibration``) by one of these candidates:

* a polynomial of total degree 0 to 2 (3 for one feature) in standardised features, fitted with
  ``scipy.optimize.least_squares`` on log-time residuals with a soft-L1 loss (so one shape
  disturbed by other processes cannot drag the fit) and a small ridge penalty, started from the
  linear least-squares fit of log efficiency;
* for one feature, a piecewise-linear curve through every fitting shape's log efficiency after a
  running median of three (which keeps steps, such as the page-fault cost of outputs that glibc
  maps fresh from the kernel above its 32 MiB mmap threshold).

Candidates (and, for matmul and attention, two feature sets) are compared by k-fold
cross-validation over shapes, scored by the mean absolute percentage error of the predicted time;
the best one is refitted on every shape. Every prediction, in cross-validation too, goes through
``EfficiencyFit.efficiency``: what is scored is exactly what a profile will compute.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.optimize import least_squares

from clustersim.hardware.calibration import (EFFICIENCY_MAX, EFFICIENCY_MIN, EfficiencyFit,
                                             FeatureScale, op_features)
from clustersim.ops import Op, OpKind

# Candidate feature sets per kind; the fit picks one by cross-validation.
FEATURE_SETS: dict[OpKind, tuple[tuple[str, ...], ...]] = {
    OpKind.MATMUL: (("log2_m", "log2_n", "log2_k", "log2_batch", "log2_min_dim"),
                    ("log2_m", "log2_n", "log2_k", "log2_batch"),
                    ("log2_flops", "log2_intensity", "log2_min_dim")),
    OpKind.ATTENTION: (("log2_batch_heads", "log2_q_len", "log2_kv_len", "log2_head_dim"),
                       ("log2_flops", "log2_intensity", "log2_q_len"),
                       ("log2_flops", "log2_intensity")),
}
DEFAULT_FEATURE_SETS: tuple[tuple[str, ...], ...] = (("log2_bytes",),)
RIDGE = 1e-3
SOFT_L1_SCALE = 0.05          # residuals (log time) beyond ~5% count linearly, not squared
MAX_FOLDS = 5


@dataclass(frozen=True)
class Sample:
    """One measured op: its model's ideal and fixed times, and its measured time."""

    op: Op
    ideal_s: float
    fixed_s: float
    measured_s: float


def _round(value: float, digits: int = 7) -> float:
    if value == 0 or not math.isfinite(value):
        return float(value)
    return float(f"{value:.{digits}g}")


def _target_log_efficiency(samples: Sequence[Sample]) -> np.ndarray:
    ideal = np.array([s.ideal_s for s in samples])
    busy = np.array([s.measured_s - s.fixed_s for s in samples])
    eff = np.where(busy > 0, ideal / np.maximum(busy, 1e-30), EFFICIENCY_MAX)
    return np.log(np.clip(eff, EFFICIENCY_MIN, EFFICIENCY_MAX))


def _raw_features(samples: Sequence[Sample], features: tuple[str, ...]) -> np.ndarray | None:
    rows = [op_features(s.op, features) for s in samples]
    if any(r is None for r in rows):
        return None
    return np.array(rows, dtype=float).reshape(len(samples), len(features))


def _scales(raw: np.ndarray, names: tuple[str, ...]) -> dict[str, FeatureScale]:
    return {name: FeatureScale(_round(float(raw[:, i].mean())), _round(float(raw[:, i].std()) or 1.0),
                               _round(float(raw[:, i].min())), _round(float(raw[:, i].max())))
            for i, name in enumerate(names)}


def _varying(raw: np.ndarray, features: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f for i, f in enumerate(features) if np.ptp(raw[:, i]) > 1e-9)


class Polynomial:
    """log efficiency = polynomial of total degree ``degree`` in standardised features."""

    def __init__(self, features: tuple[str, ...], degree: int):
        self.features, self.degree = features, degree

    def terms(self, names: tuple[str, ...]) -> list[tuple[str, ...]]:
        terms: list[tuple[str, ...]] = [()]
        for d in range(1, self.degree + 1):
            terms += list(itertools.combinations_with_replacement(names, d))
        return terms

    def parameters(self, samples: Sequence[Sample]) -> int | None:
        raw = _raw_features(samples, self.features)
        if raw is None:
            return None
        names = _varying(raw, self.features)
        if self.degree > 0 and not names:
            return None
        return len(self.terms(names))

    def fit(self, kind: OpKind, dtype: str, samples: Sequence[Sample]) -> EfficiencyFit:
        raw = _raw_features(samples, self.features)
        names = _varying(raw, self.features)
        raw = raw[:, [self.features.index(n) for n in names]]
        scales = _scales(raw, names)
        z = np.column_stack([(raw[:, i] - scales[n].center) / scales[n].scale
                             for i, n in enumerate(names)]) if names else np.empty((len(raw), 0))
        terms = self.terms(names)
        index = {n: i for i, n in enumerate(names)}
        design = np.column_stack([np.prod([z[:, index[f]] for f in term], axis=0) if term
                                  else np.ones(len(z)) for term in terms])
        target = _target_log_efficiency(samples)
        penalty = np.sqrt(RIDGE) * np.eye(len(terms))[1:]
        start = np.linalg.lstsq(np.vstack([design, penalty]),
                                np.concatenate([target, np.zeros(len(penalty))]), rcond=None)[0]
        ideal = np.array([s.ideal_s for s in samples])
        fixed = np.array([s.fixed_s for s in samples])
        log_measured = np.log([s.measured_s for s in samples])

        def residuals(coef: np.ndarray) -> np.ndarray:
            eff = np.clip(np.exp(np.minimum(design @ coef, 50.0)), EFFICIENCY_MIN, EFFICIENCY_MAX)
            return np.concatenate([np.log(fixed + ideal / eff) - log_measured, penalty @ coef])

        coef = least_squares(residuals, start, loss="soft_l1", f_scale=SOFT_L1_SCALE,
                             max_nfev=100 * len(start)).x
        return EfficiencyFit(kind, dtype, scales,
                             {"*".join(t) if t else "1": _round(float(c))
                              for t, c in zip(terms, coef)},
                             {"model": "polynomial", "degree": self.degree})


class Knots:
    """log efficiency = piecewise-linear in one feature through median-of-3 smoothed points."""

    def __init__(self, feature: str):
        self.features = (feature,)

    def parameters(self, samples: Sequence[Sample]) -> int | None:
        raw = _raw_features(samples, self.features)
        if raw is None or len(np.unique(raw[:, 0])) < 3:
            return None
        return 1           # an interpolant: cross-validation, not a count, judges it

    def fit(self, kind: OpKind, dtype: str, samples: Sequence[Sample]) -> EfficiencyFit:
        raw = _raw_features(samples, self.features)[:, 0]
        target = _target_log_efficiency(samples)
        xs = np.unique(raw)
        ys = np.array([target[raw == x].mean() for x in xs])
        smooth = ys.copy()
        for i in range(1, len(ys) - 1):
            smooth[i] = np.median(ys[i - 1:i + 2])
        knots = tuple((_round(float(x)), _round(float(y))) for x, y in zip(xs, smooth))
        return EfficiencyFit(kind, dtype, _scales(raw[:, None], self.features), knots=knots,
                             training={"model": "knots", "degree": None})


def _errors(fit: EfficiencyFit, samples: Sequence[Sample]) -> np.ndarray:
    predicted = np.array([s.fixed_s + s.ideal_s / fit.efficiency(s.op) for s in samples])
    measured = np.array([s.measured_s for s in samples])
    return np.abs(predicted / measured - 1.0)


def _candidates(kind: OpKind) -> list[Polynomial | Knots]:
    out: list[Polynomial | Knots] = []
    for features in FEATURE_SETS.get(kind, DEFAULT_FEATURE_SETS):
        top = 3 if len(features) == 1 else 2
        out += [Polynomial(features, degree) for degree in range(top + 1)]
        if len(features) == 1:
            out.append(Knots(features[0]))
    return out


def fit_group(kind: OpKind, dtype: str, samples: Sequence[Sample], *, seed: int = 0
              ) -> EfficiencyFit:
    """The best cross-validated efficiency model of one (kind, dtype) group of samples."""
    if not samples:
        raise ValueError(f"no samples to fit for {kind.value}/{dtype}")
    n = len(samples)
    folds = min(MAX_FOLDS, n)
    order = np.random.default_rng(seed).permutation(n)
    fold_rows = [order[f::folds] for f in range(folds)]
    best: tuple[float, Polynomial | Knots] | None = None
    for candidate in _candidates(kind):
        size = candidate.parameters(samples)
        if size is None or (n >= 3 and size + 2 > n - math.ceil(n / folds)):
            continue
        if n < 3:
            score = 0.0
        else:
            errors = []
            for test in fold_rows:
                held = set(test.tolist())
                train = [samples[i] for i in order if i not in held]
                if candidate.parameters(train) is None:
                    errors = []
                    break
                fit = candidate.fit(kind, dtype, train)
                errors.append(_errors(fit, [samples[i] for i in test]))
            if not errors:
                continue
            score = float(np.mean(np.concatenate(errors)))
        if best is None or score < best[0] - 1e-4:
            best = (score, candidate)
    chosen = best[1] if best is not None else Polynomial((), 0)   # a constant efficiency
    fit = chosen.fit(kind, dtype, samples)
    errors = _errors(fit, samples)
    cv = None if best is None or n < 3 else _round(100 * best[0], 4)
    training = {**fit.training, "samples": n, "mape_percent": _round(100 * float(errors.mean()), 4),
                "max_ape_percent": _round(100 * float(errors.max()), 4), "cv_mape_percent": cv}
    return EfficiencyFit(fit.kind, fit.dtype, fit.features, fit.terms, training, fit.knots)

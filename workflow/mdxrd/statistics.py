"""Statistics of correlated MD time series: integrated autocorrelation times and block standard errors."""

from __future__ import annotations

import math

import numpy as np


def integrated_autocorrelation_time(series: np.ndarray, known_mean_zero: bool = False, c: float = 5.0) -> float:
    """Integrated autocorrelation time of one or several equally long series, in samples.

    tau = 1 + 2 sum_{k=1}^{M} rho(k), rho the autocorrelation function of the series pooled
    (the autocovariances of all series summed, then normalised), summed up to Sokal's
    automatic window: the smallest M >= c tau(M) (Sokal, Monte Carlo Methods in Statistical
    Mechanics (1997); the estimator of ``emcee.autocorr.integrated_time``, Goodman & Weare,
    Commun. Appl. Math. Comput. Sci. 5, 65 (2010)). tau is the factor by which correlation
    inflates the variance of a mean (N_eff = N / tau). An oscillating series can give tau < 1
    (anticorrelated samples); it is clipped at 1: no more than independent.

    Parameters
    ----------
    series
        (n,) or (n, M) float: n >= 2 equally spaced samples of M series.
    known_mean_zero
        The series fluctuate about zero by construction (displacements from lattice sites):
        the autocovariance is taken about zero, not about each series' own window mean, which
        would remove the slow part of the motion from a short window.
    c
        Sokal's window factor.

    Returns
    -------
    float
        tau in samples, >= 1; 1 for constant series or fewer than 2 samples.
    """
    x = np.asarray(series, dtype=np.float64)
    x = x.reshape(x.shape[0], -1)
    if not known_mean_zero:
        x = x - x.mean(axis=0)
    n = x.shape[0]
    if n < 2 or not np.any(x):
        return 1.0
    n_fft = 1 << (2 * n - 1).bit_length()
    spec = np.fft.rfft(x, n=n_fft, axis=0)
    acov = np.fft.irfft((spec * spec.conj()).real.sum(axis=1), n=n_fft)[:n]
    taus = 2.0 * np.cumsum(acov / acov[0]) - 1.0
    inside = np.arange(n) < c * taus
    window = int(np.argmin(inside)) if not inside.all() else n - 1
    return max(1.0, float(taus[window]))


def block_standard_error(series: np.ndarray) -> float:
    """Standard error of the mean of a correlated time series by block averaging.

    The series is split into blocks of 1, 2, 4, ... samples; the standard error of the block
    means is computed at each level with at least 4 blocks, and the largest is returned
    (the plateau estimate of Flyvbjerg & Petersen, J. Chem. Phys. 91, 461 (1989)).

    Parameters
    ----------
    series
        (n,) float, equally spaced samples (any unit).

    Returns
    -------
    float
        Standard error of the mean (same unit); 0.0 for fewer than 4 samples.
    """
    x = np.asarray(series, dtype=np.float64)
    best = 0.0
    size = 1
    while x.size // size >= 4:
        n_blocks = x.size // size
        means = x[: n_blocks * size].reshape(n_blocks, size).mean(axis=1)
        best = max(best, float(means.std(ddof=1) / math.sqrt(n_blocks)))
        size *= 2
    return best

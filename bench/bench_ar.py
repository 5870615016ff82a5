"""AR(p) kernels of course_lib.ar against statsmodels, same inputs, float64 on both sides.

Cases, for series lengths N = 1e3, 1e5, 1e6 and orders p = 2, 10:
  * least-squares fit:   ar.fit_ar_ls(y, p)          vs AutoReg(y, lags=p, trend="c").fit()
    The same problem, two algorithms, both float64 on the host: ours factorises the centred
    lag matrix by Householder QR (LAPACK geqrf); statsmodels solves it with a pseudo-inverse
    (SVD). The row's label says so.
  * Yule-Walker fit:     ar.fit_ar_yw(y, p)          vs yule_walker(y, order=p, method="adjusted")
  * simulation:          ar.sample_ar(key, ..., N)   vs ArmaProcess(...).generate_sample(N)
  * 100-step forecast:   ar.forecast(fit, y, 100)    vs AutoRegResults.get_prediction(...)
    with 95% intervals. The same work on both sides: the point forecasts, their standard
    errors and the interval bounds as arrays (statsmodels' ``predicted_mean``, ``se_mean`` and
    ``conf_int``; not its pandas ``summary_frame``, which builds a DataFrame we do not). The
    fitted model is reused on both sides; only the forecast is timed.

Both sides are warmed with one call, then timed with exactly the same number of calls,
alternated call by call (bench.common.time_pair); the table reports the best of each. No
speed target is set for AR; the numbers are what they are. Our calls include their argument
checks (a NaN scan of the series) and the host-to-device copy of the NumPy input, as a user
would call them.

    python bench/bench_ar.py [--quick]
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import jax
import numpy as np
import scipy.signal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Row, first_call_time, markdown_table, time_pair  # noqa: E402
from course_lib import ar  # noqa: E402

TOPIC = "ar"
HORIZON = 100
COEFFS = {2: np.array([0.6, -0.3]),
          10: np.array([0.4, -0.2, 0.1, 0.05, -0.05, 0.1, 0.0, 0.05, -0.1, 0.05])}


def _series(n: int, p: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shocks = 1.0 + rng.normal(size=n + 500)
    return scipy.signal.lfilter([1.0], np.r_[1.0, -COEFFS[p]], shocks)[500:]


def _time_pair(ours, peer, repeats: int) -> tuple[float, float, float]:
    """(ours_s, peer_s, compile_s): both warmed by one call, then the same ``repeats``
    calls each, alternated."""
    first = first_call_time(ours)
    first_call_time(peer)
    ours_s, peer_s = time_pair(ours, peer, repeats)
    return ours_s, peer_s, max(first - ours_s, 0.0)


def _cases(n: int, p: int, repeats: int, peer_name: str) -> list[Row]:
    from statsmodels.regression.linear_model import yule_walker
    from statsmodels.tsa.ar_model import AutoReg
    from statsmodels.tsa.arima_process import ArmaProcess

    y = _series(n, p)
    size = f"N=1e{int(round(np.log10(n)))}, p={p}"
    rows = []

    ours_s, peer_s, comp = _time_pair(lambda: ar.fit_ar_ls(y, p),
                                      lambda: AutoReg(y, lags=p, trend="c").fit(), repeats)
    fit = ar.fit_ar_ls(y, p)
    ref = AutoReg(y, lags=p, trend="c").fit()
    err = np.abs(np.r_[float(fit.intercept), np.asarray(fit.coeffs)] - ref.params).max()
    rows.append(Row(TOPIC, f"least-squares fit (ours: QR; statsmodels: pinv/SVD), {size}", ours_s,
                    peer_s, peer_name, comp, repeats=repeats,
                    note=f"float64 both; max |Δparam| {err:.1e}"))

    ours_s, peer_s, comp = _time_pair(
        lambda: ar.fit_ar_yw(y, p),
        lambda: yule_walker(y, order=p, method="adjusted", result_object=False), repeats)
    rho, _ = yule_walker(y, order=p, method="adjusted", result_object=False)
    err = np.abs(np.asarray(ar.fit_ar_yw(y, p).coeffs) - rho).max()
    rows.append(Row(TOPIC, f"Yule-Walker fit, {size}", ours_s, peer_s, peer_name, comp,
                    repeats=repeats, note=f"float64; max |Δφ| {err:.1e}"))

    process = ArmaProcess(np.r_[1.0, -COEFFS[p]], [1.0])
    rng = np.random.default_rng(1)
    keys = iter(jax.random.split(jax.random.key(1), 1000))
    ours_s, peer_s, comp = _time_pair(
        lambda: ar.sample_ar(next(keys), COEFFS[p], 1.0, 1.0, n, burn_in=0),
        lambda: process.generate_sample(n, distrvs=rng.standard_normal), repeats)
    rows.append(Row(TOPIC, f"simulate N values, {size}", ours_s, peer_s, peer_name, comp,
                    repeats=repeats, note="lax.scan vs scipy lfilter; normal draws included"))

    end = n + HORIZON - 1

    def peer_forecast():
        """Point forecasts, standard errors and 95% bounds as arrays: what ar.forecast returns."""
        pred = ref.get_prediction(start=n, end=end)
        bounds = np.asarray(pred.conf_int(alpha=0.05))
        return np.asarray(pred.predicted_mean), np.asarray(pred.se_mean), bounds[:, 0], bounds[:, 1]

    ours_s, peer_s, comp = _time_pair(lambda: ar.forecast(fit, y, HORIZON), peer_forecast, repeats)
    ours_fc = ar.forecast(fit, y, HORIZON)
    err = max(np.abs(np.asarray(a) - b).max() for a, b in zip(ours_fc, peer_forecast()))
    rows.append(Row(TOPIC, f"{HORIZON}-step forecast + 95% interval (arrays), {size}", ours_s,
                    peer_s, peer_name, comp, repeats=repeats,
                    note=f"float64; mean, se, bounds; max |Δ| {err:.1e}"))
    return rows


def run(quick: bool = False) -> list[Row]:
    """Time every case; ``quick`` keeps N <= 1e5 and fewer repeats (a smoke run)."""
    import statsmodels

    peer_name = f"statsmodels {statsmodels.__version__}"
    lengths = (1_000, 100_000) if quick else (1_000, 100_000, 1_000_000)
    repeats = 2 if quick else 5
    rows: list[Row] = []
    with jax.enable_x64(True), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for n in lengths:
            for p in (2, 10):
                rows.extend(_cases(n, p, repeats, peer_name))
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N <= 1e5, fewer repeats")
    args = parser.parse_args()
    print(f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind})")
    print(markdown_table(run(quick=args.quick)))

"""HMM benchmark: course_lib.hmm against hmmlearn (and dynamax where it is installed).

    python bench/bench_hmm.py            # full size (T up to 10^6): run under flock
    python bench/bench_hmm.py --quick    # seconds

Cases: the forward log-likelihood and Viterbi for a categorical HMM with M = 8 symbols,
K in {4, 16}: one sequence of T in {10^3, 10^5, 10^6}, and a batch of 256 sequences of
length 1000. The peer is hmmlearn's ``CategoricalHMM(implementation="scaling")``, its
faster forward implementation (``score``: the scaled forward pass, log-likelihood only;
``decode``: Viterbi, path and its log-probability), in float64 (its only dtype). course_lib
runs in float32, the course's default dtype; one row per kernel repeats T = 10^5 in float64
for a like-for-like comparison. Same inputs, same process, and the same number of timed
repeats on both sides (the best of them is reported).

Against dynamax the work is matched too: dynamax's ``hmm_filter`` returns the filtered
marginals (T, K) and the log-likelihood (and keeps the predicted marginals), so it is timed against our ``forward`` (the same
two outputs), not against our lean log-likelihood-only pass; ``hmm_posterior_mode``
(Viterbi path) against our ``viterbi`` (path and its log joint).

dynamax is benchmarked when it can be imported: in this interpreter, or else in
``.venv-dynamax`` (``make bench`` builds it: the course's pinned stack plus dynamax, kept out
of the course venv), whose rows are measured in a worker process on the same machine, in the
same run, and passed back as JSON.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import Row, first_call_time, markdown_table, time_pair  # noqa: E402
from course_lib import hmm  # noqa: E402

DYNAMAX_PY = Path(__file__).resolve().parents[1] / ".venv-dynamax" / "bin" / "python"
NUM_SYMBOLS = 8
BATCH, BATCH_LEN = 256, 1000


def _params(k: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.dirichlet(np.ones(k)), rng.dirichlet(np.ones(k) * 2, size=k),
            rng.dirichlet(np.ones(NUM_SYMBOLS), size=k))


def _peer(k: int, seed: int = 0):
    from hmmlearn import hmm as hl

    pi, a, b = _params(k, seed)
    model = hl.CategoricalHMM(n_components=k, implementation="scaling")
    model.startprob_, model.transmat_, model.emissionprob_ = pi, a, b
    model.n_features = NUM_SYMBOLS
    return model


def _ours(k: int, dtype, seed: int = 0):
    return hmm.CategoricalHMM(*(jnp.asarray(p, dtype) for p in _params(k, seed)))


def _symbols(shape, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, NUM_SYMBOLS, size=shape).astype(np.int32)


def _row(case, ours_fn, peer_fn, target, note, repeats):
    compile_and_run = first_call_time(ours_fn)
    first_call_time(peer_fn)                   # warm-up, untimed, as ours gets
    ours, peer = time_pair(ours_fn, peer_fn, repeats)   # same repeats, alternated
    import hmmlearn

    return Row("hmm", case, ours, peer, f"hmmlearn {hmmlearn.__version__} (scaling)",
               compile_s=compile_and_run - ours, target=target, note=note, repeats=repeats)


def _check_agreement(ours_ll, peer_ll, t_total):
    """Benchmarks of wrong answers are worthless: the log-likelihoods must agree."""
    rel = abs(float(ours_ll) - float(peer_ll)) / abs(float(peer_ll))
    if rel > 1e-3:
        raise AssertionError(f"course_lib and hmmlearn disagree (T={t_total}): rel {rel:.2e}")


def single_sequence_rows(quick: bool) -> list[Row]:
    rows = []
    lengths = (1_000, 100_000) if quick else (1_000, 100_000, 1_000_000)
    states = (4,) if quick else (4, 16)
    for k in states:
        peer = _peer(k)
        for t_len in lengths:
            x = _symbols(t_len)
            x_dev, x_col = jnp.asarray(x), x[:, None]
            repeats = 3 if t_len >= 1_000_000 else 7
            target = 2.0 if t_len == 100_000 else None
            dtypes = [jnp.float32] + ([jnp.float64] if t_len == 100_000 else [])
            for dtype in dtypes:
                with jax.enable_x64(dtype == jnp.float64):
                    params = _ours(k, dtype)
                    tag = "float32" if dtype == jnp.float32 else "float64"
                    rows.append(_row(
                        f"forward log-lik (scaled forward, log p only), 1 seq, T={t_len:.0e}, K={k}",
                        lambda: hmm.log_likelihood(params, x_dev), lambda: peer.score(x_col),
                        target, f"ours {tag}, lax.scan", repeats))
                    rows.append(_row(
                        f"Viterbi (sequential max-product, path + log p), 1 seq, T={t_len:.0e}, K={k}",
                        lambda: hmm.viterbi(params, x_dev), lambda: peer.decode(x_col),
                        target, f"ours {tag}, lax.scan, int8 backpointers", repeats))
                    _check_agreement(hmm.log_likelihood(params, x_dev), peer.score(x_col), t_len)
    return rows


def batch_rows(quick: bool) -> list[Row]:
    rows = []
    for k in ((4,) if quick else (4, 16)):
        peer = _peer(k)
        x = _symbols((BATCH, BATCH_LEN))
        x_dev, x_flat, lens = jnp.asarray(x), x.reshape(-1, 1), [BATCH_LEN] * BATCH
        params = _ours(k, jnp.float32)
        case = f"{BATCH} seqs x T={BATCH_LEN}, K={k}"
        rows.append(_row(f"forward log-lik (scaled forward, log p only), {case}",
                         lambda: hmm.log_likelihood(params, x_dev),
                         lambda: peer.score(x_flat, lens), 10.0,
                         "ours float32; one scan, (K,K)x(K,N) matmul per step", 7))
        rows.append(_row(f"Viterbi (sequential max-product, path + log p), {case}",
                         lambda: hmm.viterbi(params, x_dev),
                         lambda: peer.decode(x_flat, lens), 10.0,
                         "ours float32; one scan over the batch", 7))
        ll = hmm.log_likelihood(params, x_dev)
        _check_agreement(jnp.sum(ll), peer.score(x_flat, lens), BATCH * BATCH_LEN)
    return rows


def dynamax_rows(quick: bool, in_worker: bool = False) -> list[Row]:
    """course_lib against dynamax's lax.scan kernels (float32, same inputs), if importable."""
    try:
        import dynamax
        from dynamax.hidden_markov_model import inference as dyn
    except ImportError:
        return [] if in_worker else _dynamax_rows_in_worker(quick)
    version = f"dynamax {getattr(dynamax, '__version__', '?')}"

    def peer_fns(params):
        @jax.jit
        def filt(x):   # the whole filter: log-likelihood and filtered marginals (T, K)
            ll = jnp.log(params.emission).T[x]
            post = dyn.hmm_filter(params.initial, params.transition, ll)
            return post.marginal_loglik, post.filtered_probs

        @jax.jit
        def mode(x):
            ll = jnp.log(params.emission).T[x]
            return dyn.hmm_posterior_mode(params.initial, params.transition, ll)
        return filt, mode

    rows = []
    for k in ((4,) if quick else (4, 16)):
        params = _ours(k, jnp.float32)
        filt, mode = peer_fns(params)
        cases = [("1 seq, T=1e+05", jnp.asarray(_symbols(100_000)), filt, mode),
                 (f"{BATCH} seqs x T={BATCH_LEN}", jnp.asarray(_symbols((BATCH, BATCH_LEN))),
                  jax.jit(jax.vmap(filt)), jax.jit(jax.vmap(mode)))]
        for label, x, peer_filt, peer_mode in cases:
            for what, ours_fn, peer_fn in [
                    ("forward filter (log p + filtered marginals)", lambda: hmm.forward(params, x),
                     lambda: peer_filt(x)),
                    ("Viterbi (path; ours also returns its log p)", lambda: hmm.viterbi(params, x),
                     lambda: peer_mode(x))]:
                compile_and_run = first_call_time(ours_fn)
                first_call_time(peer_fn)           # dynamax compiles too: warm it up
                ours, block_peer = time_pair(ours_fn, peer_fn, 7)
                rows.append(Row("hmm", f"{what}, {label}, K={k}", ours, block_peer, version,
                                compile_s=compile_and_run - ours, repeats=7,
                                note="both float32 JAX; dynamax via vmap for the batch"))
            _check_agreement(jnp.sum(hmm.forward(params, x).log_likelihood),
                             jnp.sum(peer_filt(x)[0]), x.size)
    return rows


def _dynamax_rows_in_worker(quick: bool) -> list[Row]:
    """The dynamax rows measured by ``.venv-dynamax``'s Python (none if that venv is absent)."""
    if not DYNAMAX_PY.exists():
        print("hmm: no dynamax rows (run `make .venv-dynamax/.installed` to add them)")
        return []
    args = [str(DYNAMAX_PY), __file__, "--dynamax-json"] + (["--quick"] if quick else [])
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"hmm: the dynamax worker failed, no dynamax rows:\n{done.stderr[-2000:]}")
        return []
    return [Row(**fields) for fields in json.loads(done.stdout.strip().splitlines()[-1])]


def run(quick: bool) -> list[Row]:
    """All HMM rows (``quick``: the small cases only, a few seconds)."""
    return single_sequence_rows(quick) + batch_rows(quick) + dynamax_rows(quick)


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    if "--dynamax-json" in sys.argv:   # worker mode, inside .venv-dynamax
        print(json.dumps([dataclasses.asdict(row) for row in dynamax_rows(quick, in_worker=True)]))
    else:
        print(markdown_table(run(quick)))

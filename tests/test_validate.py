"""The shared argument checks: each bad value is refused with the argument's name."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from course_lib import _validate as v


@pytest.mark.parametrize("bad", [True, np.bool_(True), 2.7, 2.0, "3", None, 0, -1])
def test_count_refuses_non_integers_and_small_values(bad):
    with pytest.raises(ValueError, match="n_steps"):
        v.count(bad, "n_steps")


def test_count_accepts_numpy_integers_and_checks_the_maximum():
    assert v.count(np.int64(3), "n") == 3 and type(v.count(np.int64(3), "n")) is int
    with pytest.raises(ValueError, match="<= 2"):
        v.count(3, "n", maximum=2)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "0.1", True, None, -1.0])
def test_real_refuses_non_finite_and_out_of_range(bad):
    with pytest.raises(ValueError, match="rate"):
        v.real(bad, "rate", low=0.0)


def test_real_open_and_closed_ends():
    assert v.real(0, "tol", low=0.0) == 0.0
    with pytest.raises(ValueError, match="> 0"):
        v.real(0, "temperature", low=0.0, low_open=True)
    with pytest.raises(ValueError, match="< 1"):
        v.real(1.0, "dropout", high=1.0, high_open=True)


@pytest.mark.parametrize("bad", [np.array(["a", "b"]), np.array([1, None], dtype=object),
                                 np.array([1 + 2j]), np.array([True, False]), [[1.0], [1.0, 2.0]]])
def test_real_array_names_the_argument_for_non_real_input(bad):
    with pytest.raises(ValueError, match="^x must"):
        v.real_array(bad, "x")


def test_real_array_refuses_nan_and_wrong_dimension_but_converts_integers():
    with pytest.raises(ValueError, match="x contains NaN"):
        v.real_array([0.0, np.nan], "x")
    with pytest.raises(ValueError, match="x must be 2-D"):
        v.real_array([0.0, 1.0], "x", ndim=2)
    out = v.real_array([1, 2], "x")
    assert jnp.issubdtype(out.dtype, jnp.floating) and out.tolist() == [1.0, 2.0]
    assert v.real_array([np.nan], "x", finite=False).shape == (1,)


def test_real_array_checks_only_shapes_under_jit():
    f = jax.jit(lambda a: v.real_array(a, "x", ndim=1) + 1)
    assert bool(jnp.isnan(f(jnp.array([jnp.nan]))[0]))     # traced: values cannot be read


@pytest.mark.parametrize("bad, match", [([0, 3], r"\[0, 3\).*got 3"), ([-1, 0], "got -1"),
                                        ([0.0, 1.0], "integer"), ([True], "integer")])
def test_ids_must_be_integers_in_range(bad, match):
    with pytest.raises(ValueError, match="labels must.*" + match):
        v.ids(np.asarray(bad), "labels", 3)


def test_ids_accepts_the_edges():
    assert v.ids([0, 2], "labels", 3).tolist() == [0, 2]


@pytest.mark.parametrize("bad", [[0.5, 0.6], [1.5, -0.5], [np.nan, 1.0]])
def test_probabilities_must_be_non_negative_and_sum_to_one(bad):
    with pytest.raises(ValueError, match="weights"):
        v.probabilities(bad, "weights")


def test_probabilities_checks_rows():
    v.probabilities([[0.2, 0.8], [1.0, 0.0]], "transition")
    with pytest.raises(ValueError, match="transition must sum to 1"):
        v.probabilities([[0.2, 0.8], [0.5, 0.0]], "transition")


@pytest.mark.parametrize("bad, match", [([[1.0, 2.0], [2.0, 1.0]], "positive definite"),
                                        ([[1.0, 0.5], [0.0, 1.0]], "symmetric"),
                                        ([[1.0, 0.0], [0.0, 0.0]], "positive definite"),
                                        ([1.0, 2.0], "square")])
def test_positive_definite(bad, match):
    with pytest.raises(ValueError, match="cov must.*" + match):
        v.positive_definite(bad, "cov")
    assert v.positive_definite(np.eye(2)[None].repeat(3, 0), "cov").shape == (3, 2, 2)


def test_real_array_checks_a_constant_captured_inside_jit():
    const = jnp.array([1.0, 2.0])
    f = jax.jit(lambda a: v.real_array(const, "w") * a)
    assert f(2.0).tolist() == [2.0, 4.0]


def test_key_accepts_typed_and_raw_keys_and_names_the_argument():
    typed, raw = jax.random.key(0), jax.random.PRNGKey(0)
    assert v.key(typed) is typed and v.key(raw) is raw
    with pytest.raises(ValueError, match="rng must be one PRNG key"):
        v.key(jax.random.split(typed, 3), "rng")
    for bad in (0, np.array([1, 2]), jnp.zeros(2), "key", None):
        with pytest.raises(ValueError, match="rng must be a PRNG key"):
            v.key(bad, "rng")

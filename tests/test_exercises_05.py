"""Notebook 05's exercise checkers pass the right answers and reject the obvious wrong ones."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from exercises import checkers

ck = checkers("05")

# ------------------------------------------------------------------ exercise 1: shapes and parameters
EXERCISE_STACK = [("conv", 5, 8, 1, 0), ("pool", 2, 2), ("conv", 3, 16, 1, 1), ("pool", 2, 2)]


def make_stack_fn(*, plus_one=True, bias=True, use_padding=True, use_c_in=True, use_stride=True,
                  square=False):
    """The formula, written here, with one of the usual mistakes switched on."""
    def stack_shape_and_params(in_shape, layers):
        h, w, c = in_shape
        total = 0
        for layer in layers:
            if layer[0] == "conv":
                _, k, c_out, stride, padding = layer
                total += c_out * (k * k * (c if use_c_in else 1) + (1 if bias else 0))
                c = c_out
            else:
                _, k, stride = layer
                padding = 0
            p, s = (padding if use_padding else 0), (stride if use_stride else 1)
            h = (h + 2 * p - k) // s + (1 if plus_one else 0)
            w = h if square else (w + 2 * p - k) // s + (1 if plus_one else 0)
        return (h, w, c), total
    return stack_shape_and_params


def test_stack_right_answer_passes():
    fn = make_stack_fn()
    final_shape, conv_params = fn((28, 28, 1), EXERCISE_STACK)
    # by hand: 28 -5+1 = 24, pool 12, same conv 12, pool 6; 8*(25+1) + 16*(9*8+1)
    assert (final_shape, conv_params) == ((6, 6, 16), 8 * 26 + 16 * 73) == ((6, 6, 16), 1376)
    ck.check_stack_shape_and_params(fn, final_shape, conv_params)
    ck.check_stack_shape_and_params(fn, [6, 6, 16], np.int64(1376))   # a list and a NumPy int are fine


@pytest.mark.parametrize("wrong", [
    lambda in_shape, layers: ((6, 6, 16), 1376),          # typed-in answer of the exercise stack
    lambda in_shape, layers: ((0, 0, 0), 0),              # trivial
    make_stack_fn(plus_one=False),                        # off by one in the size formula
    make_stack_fn(bias=False),                            # forgot the biases
    make_stack_fn(use_padding=False),                     # ignored the padding
    make_stack_fn(use_c_in=False),                        # forgot the input channels
    make_stack_fn(use_stride=False),                      # ignored the stride
    make_stack_fn(square=True),                           # assumed square inputs
], ids=["typed-in", "trivial", "off-by-one", "no-bias", "no-padding", "no-c-in", "no-stride", "square"])
def test_stack_wrong_function_fails(wrong):
    with pytest.raises(AssertionError):
        ck.check_stack_shape_and_params(wrong, (6, 6, 16), 1376)


@pytest.mark.parametrize("final_shape, conv_params", [
    ((7, 7, 16), 1376),      # "same" padding everywhere
    ((6, 6, 8), 1376),       # the first conv's depth
    ((6, 6, 16), 1352),      # no biases
    ((6, 6, 16), 208),       # the first conv only
    ((5, 5, 16), 1376),      # off by one
])
def test_stack_wrong_final_answer_fails(final_shape, conv_params):
    with pytest.raises(AssertionError):
        ck.check_stack_shape_and_params(make_stack_fn(), final_shape, conv_params)


# ------------------------------------------------------------------ exercise 2: momentum
def momentum_right(grad_fn, start, lr, mu, steps):
    theta = np.asarray(start, np.float64)
    u = np.zeros_like(theta)
    points, velocities = [], []
    for _ in range(steps):
        u = mu * u + np.asarray(grad_fn(jnp.asarray(theta, jnp.float32)), np.float64)
        theta = theta - lr * u
        points.append(theta)
        velocities.append(u)
    return np.array(points), np.array(velocities)


def momentum_plain_gd(grad_fn, start, lr, mu, steps):        # ignores mu
    return momentum_right(grad_fn, start, lr, 0.0, steps)


def momentum_ema(grad_fn, start, lr, mu, steps):             # u = mu u + (1 - mu) g
    theta, u, points, velocities = jnp.asarray(start, jnp.float32), 0.0, [], []
    for _ in range(steps):
        u = mu * u + (1 - mu) * grad_fn(theta)
        theta = theta - lr * u
        points.append(theta)
        velocities.append(u)
    return jnp.stack(points), jnp.stack(velocities)


def momentum_with_start(grad_fn, start, lr, mu, steps):      # theta_0 .. theta_T: one row too many
    points, velocities = momentum_right(grad_fn, start, lr, mu, steps)
    return (np.vstack([np.asarray(start, np.float64)[None], points]),
            np.vstack([np.zeros((1, len(start))), velocities]))


def momentum_shifted(grad_fn, start, lr, mu, steps):         # theta_0 .. theta_(T-1): off by one
    points, velocities = momentum_right(grad_fn, start, lr, mu, steps)
    return (np.vstack([np.asarray(start, np.float64)[None], points[:-1]]),
            np.vstack([np.zeros((1, len(start))), velocities[:-1]]))


def momentum_ascent(grad_fn, start, lr, mu, steps):          # climbs
    points, velocities = momentum_right(grad_fn, start, -lr, mu, steps)
    return points, -velocities


def momentum_nesterov(grad_fn, start, lr, mu, steps):        # gradient at the look-ahead point
    theta, u, points, velocities = jnp.asarray(start, jnp.float32), 0.0, [], []
    for _ in range(steps):
        u = mu * u + grad_fn(theta - lr * mu * u)
        theta = theta - lr * u
        points.append(theta)
        velocities.append(u)
    return jnp.stack(points), jnp.stack(velocities)


def momentum_by_optax(grad_fn, start, lr, mu, steps):        # the library call, gradients as "velocities"
    tx = optax.sgd(lr, momentum=mu)
    theta = jnp.asarray(start, jnp.float32)
    state, points, velocities = tx.init(theta), [], []
    for _ in range(steps):
        g = grad_fn(theta)
        updates, state = tx.update(g, state)
        theta = optax.apply_updates(theta, updates)
        points.append(theta)
        velocities.append(g)
    return jnp.stack(points), jnp.stack(velocities)


@jax.jit
def rosenbrock_grad(t):
    return jnp.stack([-2 * (1 - t[0]) - 400 * t[0] * (t[1] - t[0] ** 2), 200 * (t[1] - t[0] ** 2)])


def momentum_typed_in(grad_fn, start, lr, mu, steps):        # one stored Rosenbrock path for everything
    return momentum_right(rosenbrock_grad, [-1.2, 1.0], 1e-3, 0.9, 100)


def test_momentum_right_answer_passes():
    ck.check_momentum_path(momentum_right)


def test_momentum_optax_reference_agrees_with_the_right_answer():
    """The checker's truth and optax's rule are the same rule (so the checker is not too strict)."""
    assert np.allclose(rosenbrock_grad(jnp.array([-1.2, 1.0])),
                       jax.grad(lambda t: (1 - t[0]) ** 2 + 100 * (t[1] - t[0] ** 2) ** 2)(jnp.array([-1.2, 1.0])))
    ours, _ = momentum_right(rosenbrock_grad, [-1.2, 1.0], 1e-3, 0.9, 100)
    theirs, _ = momentum_by_optax(rosenbrock_grad, [-1.2, 1.0], 1e-3, 0.9, 100)
    assert np.allclose(ours, theirs, atol=1e-4)


@pytest.mark.parametrize("wrong", [momentum_plain_gd, momentum_ema, momentum_with_start, momentum_shifted,
                                   momentum_ascent, momentum_nesterov, momentum_by_optax, momentum_typed_in])
def test_momentum_wrong_answer_fails(wrong):
    with pytest.raises(AssertionError):
        ck.check_momentum_path(wrong)


# ------------------------------------------------------------------ exercise 3: AdamW
def make_adamw(*, coupled=False, bias_correction=True, decay_times_lr=True, decay_after=False,
               eps_inside=False, t_offset=0, decay_sign=1.0, update_moments=True, decay=True):
    def adamw_step(theta, g, m, v, t, lr, weight_decay, b1=0.9, b2=0.999, eps=1e-8):
        theta, g, m, v = (np.asarray(a, np.float64) for a in (theta, g, m, v))
        wd = weight_decay if decay else 0.0
        g_used = g + wd * theta if coupled else g
        m_new = b1 * m + (1 - b1) * g_used
        v_new = b2 * v + (1 - b2) * g_used**2
        tt = t + t_offset
        m_hat = m_new / (1 - b1**tt) if bias_correction else m_new
        v_hat = v_new / (1 - b2**tt) if bias_correction else v_new
        adam = m_hat / (np.sqrt(v_hat + eps) if eps_inside else np.sqrt(v_hat) + eps)
        if coupled:
            new = theta - lr * adam
        elif decay_after:
            new = theta - lr * adam
            new = new - lr * wd * new
        else:
            new = theta - lr * adam - decay_sign * (lr if decay_times_lr else 1.0) * wd * theta
        return (new, m_new, v_new) if update_moments else (new, m, v)
    return adamw_step


def test_adamw_right_answer_passes():
    ck.check_adamw_step(make_adamw())


def test_adamw_right_answer_in_float32_jax_passes():
    def adamw_step(theta, g, m, v, t, lr, weight_decay, b1=0.9, b2=0.999, eps=1e-8):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        return theta - lr * (m_hat / (jnp.sqrt(v_hat) + eps) + weight_decay * theta), m, v
    ck.check_adamw_step(adamw_step)


@pytest.mark.parametrize("wrong", [
    make_adamw(coupled=True),             # L2 penalty inside Adam: not decoupled
    make_adamw(bias_correction=False),    # the syllabus's missing bias correction
    make_adamw(decay_times_lr=False),     # decay not scaled by the learning rate
    make_adamw(decay_after=True),         # decay applied to the already updated weights
    make_adamw(eps_inside=True),          # epsilon under the square root
    make_adamw(t_offset=1),               # bias correction off by one step
    make_adamw(decay_sign=-1.0),          # the decay pushes weights away from zero
    make_adamw(update_moments=False),     # returns the old moments
    make_adamw(decay=False),              # plain Adam
    lambda theta, g, m, v, t, lr, weight_decay, **kw: (theta, m, v),   # trivial: nothing moves
], ids=["coupled", "no-bias-correction", "decay-not-times-lr", "decay-after", "eps-inside",
        "t-off-by-one", "decay-sign", "old-moments", "plain-adam", "trivial"])
def test_adamw_wrong_answer_fails(wrong):
    with pytest.raises(AssertionError):
        ck.check_adamw_step(wrong)

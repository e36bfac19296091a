"""EMA of the parameters: the reference's warm-up min(r, (1 + n)/(10 + n)) and the constant rate."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from score_sde.experiment import training


def test_ema_decay_formula():
  steps = jnp.arange(0, 5000)
  n = np.arange(1, 5001, dtype=np.float64)  # the update after `step` steps is update number step + 1
  expected = np.minimum(0.999, (1 + n) / (10 + n))
  np.testing.assert_allclose(training.ema_decay(steps, 0.999, True), expected, rtol=1e-6)
  assert float(training.ema_decay(jnp.asarray(0), 0.999, True)) == pytest.approx(2 / 11, rel=1e-6)
  # The warm-up ends where (1 + n)/(10 + n) = r, n = (10 r - 1)/(1 - r) = 8991 for r = 0.999.
  assert float(training.ema_decay(jnp.asarray(8990), 0.999, True)) == pytest.approx(0.999, rel=1e-6)
  assert float(training.ema_decay(jnp.asarray(100), 0.999, True)) < 0.92
  np.testing.assert_array_equal(training.ema_decay(steps, 0.999, False), np.float32(0.999))


def _run_to_constant(n_steps, ema_warmup, ema_rate=0.999):
  """SGD(lr 1) on 0.5 |p - c|^2 moves p0 to c in one step and keeps it there, so after n steps the
  EMA is w p0 + (1 - w) c, with w the weight left on the initialisation."""
  p0 = {"w": jnp.full((3,), 5.0)}
  c = jnp.asarray([1.0, -2.0, 0.5])
  loss_fn = lambda params, key, image, label: (0.5 * jnp.sum((params["w"] - c) ** 2), {})
  optimizer = optax.sgd(1.0)
  state = training.TrainState(step=jnp.zeros((), jnp.int32), params=p0,
                              ema_params=jax.tree.map(jnp.copy, p0), opt_state=optimizer.init(p0))
  step = jax.jit(training.make_train_step(loss_fn, optimizer, ema_rate, ema_warmup))
  batches = {"image": jnp.zeros((1, 1))}
  for _ in range(n_steps):
    state, _ = step(state, batches, jax.random.PRNGKey(0))
  return p0["w"], c, state.ema_params["w"]


@pytest.mark.parametrize("ema_warmup", [True, False])
def test_short_run_ema_weight_on_initialisation(ema_warmup, x64):
  n = 300
  p0, c, ema = _run_to_constant(n, ema_warmup)
  k = np.arange(1, n + 1, dtype=np.float64)
  decays = np.minimum(0.999, (1 + k) / (10 + k)) if ema_warmup else np.full(n, 0.999)
  w = np.prod(decays)  # closed form: 10! (n + 1)! / (n + 10)! with the warm-up, 0.999^n without
  np.testing.assert_allclose(ema, w * p0 + (1 - w) * c, rtol=1e-5, atol=1e-6)
  if ema_warmup:
    assert w < 1e-15  # free of the random initialisation
  else:
    assert w == pytest.approx(0.999**n) and w > 0.7  # 74 % of the EMA is still the initialisation

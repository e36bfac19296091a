"""The config edge: sampler options read generically from a sampler's keyword-only parameters."""
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde.experiment import builders, config_files
from tests.helpers.tiny_config import tiny_config


TRACED = []  # the options of each traced call of fake_sampler


def fake_sampler(key, score_fn, sde, shape, *, predictor="none", snr=0.0, denoise=False,
                 n_steps_each=7, eps=None, constraint=None):
  """Zeros of ``shape``, with the score at (0, t = 0.5) as its info."""
  TRACED.append(dict(predictor=predictor, snr=snr, denoise=denoise, n_steps_each=n_steps_each,
                     eps=eps, constraint=constraint))
  x = jnp.zeros(shape)
  return x, {"score": score_fn(x, jnp.full(shape[:1], 0.5))}


def test_sampler_options_come_from_the_config_fields_of_its_keyword_parameters():
  config = tiny_config()
  config.sampling.predictor = "reverse_diffusion"
  config.sampling.snr = 0.25
  config.sampling.noise_removal = True
  config.sampling.n_steps_each = 3
  options = builders.sampler_options(config, fake_sampler)
  # constraint is no config field and eps is None: both keep the sampler's default (for eps, the
  # SDE's default_eps).
  assert options == dict(predictor="reverse_diffusion", snr=0.25, denoise=True, n_steps_each=3)
  config.sampling.eps = 1e-4
  assert builders.sampler_options(config, fake_sampler)["eps"] == 1e-4


def test_every_sampler_option_is_a_config_field():
  """Each keyword option of each SAMPLERS entry can be set from config.sampling (constraint and
  timesteps, arrays and callables, are Python-only)."""
  config = tiny_config()
  for name, sample_fn in builders.SAMPLERS.items():
    for option, parameter in inspect.signature(sample_fn).parameters.items():
      if parameter.kind == parameter.KEYWORD_ONLY and option not in ("constraint", "timesteps"):
        assert builders.OPTION_FIELDS.get(option, option) in config.sampling, (name, option)


def test_required_sampler_option_left_unset_names_its_field():
  config = tiny_config()
  config.sampling.method = "ald"
  config.training.sde = "vesde"
  with pytest.raises(ValueError, match=r"config.sampling.method='ald' needs config.sampling.step_lr"):
    builders.build_experiment(config)


def test_get_sampler_runs_any_sampler_of_the_table(monkeypatch):
  monkeypatch.setitem(builders.SAMPLERS, "fake", fake_sampler)
  config = tiny_config()
  config.sampling.method = "FAKE"
  config.sampling.snr = 0.5
  exp = builders.build_experiment(config)
  params = exp.init_state().ema_params
  TRACED.clear()
  x, info = exp.sampler(jax.random.PRNGKey(0), params, 3)
  assert x.shape == (3, 8, 8, 1)
  assert TRACED == [dict(predictor=config.sampling.predictor, snr=0.5,
                         denoise=config.sampling.noise_removal,
                         n_steps_each=config.sampling.n_steps_each, eps=None, constraint=None)]
  # The sampler follows the network's score (unguided here).
  expected = jax.jit(lambda: builders.guided_model(
      exp.guidance, exp.sde, exp.network_model, exp.model_fn, params, num_classes=0)(
          jnp.zeros((3, 8, 8, 1)), jnp.full((3,), 0.5)))()
  np.testing.assert_allclose(info["score"], expected, rtol=1e-4)


def test_unknown_sampler_names_the_field_and_the_choices():
  config = tiny_config()
  config.sampling.method = "euler"
  with pytest.raises(ValueError, match=r"config.sampling.method='euler'.*'pc', 'ald', 'ode', 'ddim', 'dpm_solver', 'edm', 'adaptive_sde'"):
    builders.build_experiment(config)


@pytest.mark.parametrize("config_file",
                         ["configs/digits/ddpmpp_vp_small.py", "configs/digits/dit.py"])
def test_the_state_initialiser_gives_the_bits_of_a_plain_jit(config_file):
  """distributed.jit_initializer compiles without LLVM optimisation on CPU: the parameters,
  optimiser state and EMA of jax.jit with the default options, to within 2 units in the last place
  (NCSN++'s and DiT's initialisers: truncated normal, variance scaling, xavier, normal, zeros;
  normal draws differ by 1 ulp where LLVM fuses a multiply-add)."""
  import optax  # pylint: disable=import-outside-toplevel

  from score_sde.experiment import distributed, training  # pylint: disable=import-outside-toplevel

  config = config_files.load_config_file(config_file, "config")
  module = builders.get_model(config)
  shape = (1, config.data.image_size, config.data.image_size, config.data.num_channels)
  init = lambda key: training.init_train_state(key, module, optax.adam(1e-3), shape)
  key = jax.random.PRNGKey(3)
  initializer = distributed.jit_initializer(init, distributed.data_mesh())
  fast = initializer(key)
  plain = jax.jit(init)(key)
  assert jax.eval_shape(lambda: initializer(key)) == jax.eval_shape(init, key)  # inside a trace
  assert jax.tree.structure(fast) == jax.tree.structure(plain)
  for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(plain)):
    if jnp.issubdtype(a.dtype, jnp.floating):
      np.testing.assert_array_max_ulp(np.asarray(a), np.asarray(b), maxulp=2)
    else:
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

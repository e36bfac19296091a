"""The config edge: sampler options read generically from a sampler's keyword-only parameters."""
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde.experiment import builders
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

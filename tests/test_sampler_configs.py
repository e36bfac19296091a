"""Every SAMPLERS entry and every objective, selected by a config, end to end on tiny digits:
train -> ``--mode sample`` (each sampler) -> eval, and stale sample shards are never reused."""
import json
import math
import os

import jax
import numpy as np
import pytest
from PIL import Image

from score_sde.diffusion import losses, parametrization
from score_sde.experiment import builders, cli, evaluation, generate, restore, train
from score_sde.samplers import SAMPLERS
from tests.helpers.tiny_config import tiny_config

pytestmark = pytest.mark.slow

# Small, fast options per sampler (config.sampling fields); everything else is the config default.
FAST_OPTIONS = {
    "pc": dict(corrector="langevin"),
    "ald": dict(step_lr=2e-5),
    "ode": dict(rtol=1e-2, atol=1e-2),
    "ddim": dict(num_steps=5),
    "dpm_solver": dict(num_steps=5),
    "edm": dict(num_steps=4),
    "adaptive_sde": dict(rtol=0.05, atol=0.05),
    "flow": dict(num_steps=4, solver="heun"),
    "consistency": dict(num_steps=2),
}


def _config(**sampling):
  config = tiny_config()
  config.training.n_iters = 2
  config.eval.num_samples = 4
  config.eval.batch_size = 4
  for field, value in sampling.items():
    setattr(config.sampling, field, value)
  return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdirs = {}
  for sde in ("vpsde", "vesde"):
    workdir = str(tmp_path_factory.mktemp(sde))
    config = _config()
    config.training.sde = sde
    train.train(config, workdir)
    workdirs[sde] = workdir
  return workdirs


def test_every_sampler_is_in_the_option_table():
  assert sorted(FAST_OPTIONS) == sorted(SAMPLERS)


@pytest.mark.parametrize("method", sorted(SAMPLERS))
def test_mode_sample_runs_every_sampler_from_the_config(trained, method):
  sde = "vesde" if method == "ald" else "vpsde"  # annealed Langevin anneals VE noise levels
  config = _config(method=method, **FAST_OPTIONS[method])
  config.training.sde = sde
  grid_path = cli.MODES["sample"](config, trained[sde])
  out_dir = os.path.dirname(grid_path)
  assert os.path.basename(out_dir).startswith(f"final_2_{method}_")
  spec = json.load(open(os.path.join(out_dir, "sampling.json")))
  assert spec["method"] == method and spec["batch_size"] == 4
  for option, value in FAST_OPTIONS[method].items():
    assert spec[option] == value
  with np.load(os.path.join(out_dir, "samples_0.npz")) as shard:
    samples = shard["samples"]
  assert samples.shape == (4, 8, 8, 1) and samples.dtype == np.uint8
  assert samples.std() > 0  # not a blank or constant image
  assert np.asarray(Image.open(grid_path)).ndim == 2


def test_stale_shards_are_never_reused(trained):
  """A second sampler writes its own folder; a changed sampler in the same eval folder is refused."""
  workdir = trained["vpsde"]
  first = generate.sample(_config(method="ddim", num_steps=3), workdir)
  second = generate.sample(_config(method="ddim", num_steps=4), workdir)
  assert os.path.dirname(first) != os.path.dirname(second)
  steps = [json.load(open(os.path.join(os.path.dirname(p), "sampling.json")))["num_steps"]
           for p in (first, second)]
  assert steps == [3, 4]
  again = generate.sample(_config(method="ddim", num_steps=3), workdir)  # same settings: resumed
  assert again == first
  out_dir = os.path.join(workdir, "shards")
  exp_a = _config(method="ddim", num_steps=3)
  generate.sample_rounds(builders.build_experiment(exp_a), _params(exp_a, workdir),
                         _key(), out_dir)
  exp_b = _config(method="ddim", num_steps=4)
  with pytest.raises(ValueError, match=r"other settings \(num_steps"):
    generate.sample_rounds(builders.build_experiment(exp_b), _params(exp_b, workdir), _key(),
                           out_dir)


def _params(config, workdir):
  return restore.latest_params(builders.build_experiment(config), workdir)[1]


def _key():
  return jax.random.PRNGKey(0)


TEACHER_CONFIG = """import sys
sys.path.insert(0, {root!r})
from tests.helpers.tiny_config import tiny_config


def get_config():
  return tiny_config()
"""


@pytest.mark.parametrize("objective", sorted(losses.OBJECTIVES))
def test_every_objective_trains_samples_and_evaluates_from_the_config(tmp_path, objective,
                                                                      trained):
  consistency = objective in parametrization.CONSISTENCY_OBJECTIVES
  config = _config(method="consistency" if consistency else "dpm_solver", num_steps=2)
  config.training.loss = objective
  config.training.continuous = objective not in ("smld", "ddpm")
  config.training.sde = "vesde" if objective == "smld" else "vpsde"
  config.model.embedding_type = "positional"
  config.eval.begin_ckpt = config.eval.end_ckpt = 1
  config.training.snapshot_freq = 2
  config.eval.bpd_num_repeats = 1
  config.eval.bpd_rtol = config.eval.bpd_atol = 1e-2
  config.eval.enable_bpd = not consistency  # a consistency function has no likelihood
  if objective == "consistency_distillation":  # the teacher: the module's trained VP model
    teacher = tmp_path / "teacher_config.py"
    teacher.write_text(TEACHER_CONFIG.format(root=os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))))
    config.consistency.teacher_config = str(teacher)
    config.consistency.teacher_workdir = trained["vpsde"]
    config.consistency.num_levels = 5
  workdir = str(tmp_path / "run")
  state = train.train(config, workdir)
  assert int(state.step) == 2
  report = evaluation.evaluate(config, workdir)[2]
  assert math.isfinite(report["eval_loss"]) and report["eval_loss"] > 0
  if not consistency:
    assert 0 < report["bpd"] < 30  # an untrained model of 8-bit data: a few bits above 8 at most
  assert report["fdd"]["num_samples"] == 4


def test_rectified_flow_trains_samples_and_evaluates_from_the_config(tmp_path):
  """config.training.sde='rectified_flow' with the flow-matching objective (logit-normal t), sampled
  by the Heun flow sampler, evaluated (loss, bits/dim through the velocity network's score)."""
  config = _config(method="flow", num_steps=3, solver="heun")
  config.training.sde = "rectified_flow"
  config.training.loss = "flow_matching"
  config.training.time_sampling = "logit_normal"
  config.model.embedding_type = "positional"
  config.eval.begin_ckpt = config.eval.end_ckpt = 1
  config.training.snapshot_freq = 2
  config.eval.bpd_num_repeats = 1
  config.eval.bpd_rtol = config.eval.bpd_atol = 1e-2
  workdir = str(tmp_path)
  assert int(train.train(config, workdir).step) == 2
  report = evaluation.evaluate(config, workdir)[2]
  assert math.isfinite(report["eval_loss"]) and report["eval_loss"] > 0
  assert 0 < report["bpd"] < 30
  assert report["fdd"]["num_samples"] == 4

"""Restoring trained parameters of a work directory: the score model's and the classifier's."""
from __future__ import annotations

import os

import jax

from score_sde.experiment import classifier_training, training
from score_sde.experiment.experiment import Experiment
from score_sde.io import checkpointing


def latest_params(exp: Experiment, workdir: str):
  """(step, EMA params) of the newest checkpoint in ``workdir``."""
  ckpts = checkpointing.TrainCheckpoints(workdir, read_only=True)
  state = ckpts.restore_latest(exp.abstract_state())
  ckpts.close()
  if state is None:
    raise FileNotFoundError(f"No checkpoint in {workdir}/checkpoints or {workdir}/checkpoints-meta; "
                            "train first (--mode train) or point --workdir at a training run.")
  return int(state.step), state.ema_params


def warm_start_params(exp: Experiment, workdir: str):
  """The newest EMA parameters of another run in ``workdir`` (a plain score-model `TrainState` of
  this config's network and optimiser), to start a fresh run from: config.training.init_from."""
  shapes = jax.eval_shape(exp.init_state)
  source = training.TrainState(step=shapes.step, params=shapes.params,
                               ema_params=shapes.ema_params, opt_state=shapes.opt_state)
  ckpts = checkpointing.TrainCheckpoints(workdir, read_only=True)
  try:
    state = ckpts.restore_latest(checkpointing.abstract_like(source))
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f"config.training.init_from={workdir!r}: its checkpoint does not match this "
                     f"config's network and optimiser ({type(e).__name__}: {str(e)[:200]}).") from e
  finally:
    ckpts.close()
  if state is None:
    raise FileNotFoundError(f"config.training.init_from={workdir!r} holds no checkpoint; train that "
                            "run first or unset the field.")
  return state.ema_params


def abstract_classifier_state(exp: Experiment):
  """Shapes and shardings of the classifier's train state, to restore it into."""
  init = lambda: classifier_training.init_classifier_state(
      jax.random.PRNGKey(0), exp.classifier_module, exp.classifier.optimizer(),
      (1, *exp.image_shape))
  return checkpointing.abstract_like(jax.eval_shape(init))


def load_classifier_params(exp: Experiment, workdir: str):
  """(step, params) of the newest classifier checkpoint in ``workdir/classifier``."""
  ckpts = checkpointing.TrainCheckpoints(os.path.join(workdir, "classifier"), read_only=True)
  state = ckpts.restore_latest(abstract_classifier_state(exp))
  ckpts.close()
  if state is None:
    raise FileNotFoundError(f"No classifier checkpoint in {workdir}/classifier; train one with "
                            "--mode train_classifier (config.classifier sets its size).")
  return int(state.step), jax.device_put(state.params, exp.replicated)


def guidance_classifier_params(exp: Experiment, workdir: str):
  """The classifier params that ``exp.guidance`` needs: None unless it is classifier guidance."""
  if exp.guidance.kind != "classifier":
    return None
  return load_classifier_params(exp, workdir)[1]

"""Score-model training (Song et al. 2021, eq. 7) and training of the noise-conditional classifier of
classifier guidance (eq. 14), both on the loop of `loop.py`."""
from __future__ import annotations

import functools
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from score_sde.experiment import builders, classifier_training, distributed, loop, optim, training
from score_sde.experiment.experiment import Experiment, check_class_labels
from score_sde.experiment.outputs import atomic_json, write_sample_grid
from score_sde.experiment.restore import abstract_classifier_state, warm_start_params
from score_sde.io import checkpointing

log = logging.getLogger(__name__)

CLASSIFIER_EVAL_TIMES = (0.05, 0.25, 0.5)
CONFIG_RECORD = "config.json"  # the config of the run, in its work directory


class ConfigChangedError(ValueError):
  """A resumed run changes fields that its checkpoints cannot follow (model, SDE, data shape)."""


def train(config, workdir: str) -> training.TrainState:
  """Trains from scratch or resumes from the newest checkpoint in ``workdir``."""
  if builders.is_controlnet(config):
    raise ValueError("config.controlnet.control_type is set: train a ControlNet with "
                     "--mode train_controlnet (or unset the field to train the base model).")
  return _train(config, workdir)


def train_controlnet(config, workdir: str) -> training.TrainState:
  """Trains the ControlNet of config.controlnet on the frozen newest EMA parameters of
  config.controlnet.base_workdir (its trainable copy starting at them), or resumes."""
  if not builders.is_controlnet(config):
    raise ValueError("--mode train_controlnet needs config.controlnet.control_type, one of "
                     "experiment/controlnet.CONTROL_TYPES (e.g. configs/digits/controlnet_edges.py).")
  if not config.controlnet.base_workdir:
    raise ValueError("--mode train_controlnet needs config.controlnet.base_workdir, the workdir of "
                     "the trained base model, e.g. --config.controlnet.base_workdir=runs/digits.")
  from score_sde.experiment import controlnet  # pylint: disable=import-outside-toplevel

  return _train(config, workdir, base_params=lambda: controlnet.load_base_params(config))


def _train(config, workdir: str, base_params=None) -> training.TrainState:
  exp = builders.build_training_experiment(config)
  opts = exp.training
  distributed.check_batch_size(opts.batch_size)
  eval_iter = exp.dataset(split="test", batch_size=opts.batch_size, shuffle_seed=exp.seed + 1,
                          evaluation=True)
  try:
    trainer = _score_trainer(exp, workdir, eval_iter, _resume_plan(exp, config, workdir),
                             base_params)
    state, _ = loop.run(trainer, _score_schedule(exp), workdir)
  finally:
    eval_iter.close()
  return state


def _score_schedule(exp: Experiment) -> loop.Schedule:
  o = exp.training
  return loop.Schedule(n_iters=o.n_iters, steps_per_call=o.n_jitted_steps,
                       examples_per_step=o.batch_size, log_freq=o.log_freq, eval_freq=o.eval_freq,
                       snapshot_freq=o.snapshot_freq,
                       preemption_freq=o.snapshot_freq_for_preemption)


def _initial_state(exp: Experiment, base_params=None) -> training.TrainState:
  """A fresh train state; with training.init_from, its parameters, evaluation EMA and (for a
  consistency objective) target network all start at that run's EMA parameters (the student of
  consistency distillation starts as its teacher; k-rectified flow as the (k-1)-th flow).
  A ControlNet's ``base_params()`` are its frozen base, and its copy starts at them."""
  state = exp.init_state()
  if base_params is not None:
    from score_sde.models.controlnet import copy_encoder_params  # pylint: disable=import-outside-toplevel

    base = base_params()
    params = {"base": base, "controlnet": copy_encoder_params(state.params["controlnet"], base)}
    params = jax.device_put(params, exp.replicated)
    return state.replace(params=params, ema_params=jax.tree.map(jnp.copy, params))
  if not exp.training.init_from:
    return state
  params = warm_start_params(exp, exp.training.init_from)
  log.info("Starting from the EMA parameters of %s", exp.training.init_from)
  copy = lambda: jax.tree.map(jnp.copy, params)
  fields = {"params": copy(), "ema_params": copy()}
  if isinstance(state, training.ConsistencyTrainState):
    fields["target_params"] = copy()
  return state.replace(**fields)


def _show(value) -> str:
  text = json.dumps(value)
  return text if len(text) <= 40 else text[:37] + "..."


def _resume_plan(exp: Experiment, config, workdir: str) -> dict:
  """Checks ``config`` against ``workdir/config.json``, the config the checkpoints were trained
  with, and returns the loop.Trainer fields that resume with it.

  The record is written (by process 0) at each start, once the work directory's lock is held,
  so it holds the config of the latest run. Without a checkpoint there is nothing to check.
  Changed model or SDE fields are refused (`ConfigChangedError`, one line naming them); other
  changes are allowed with a warning listing them. An optimiser change that alters the optimiser
  state's structure (e.g. config.optim.grad_clip on -> off changes the optax chain) restores the
  step, parameters and EMA from the recorded structure and rebuilds the optimiser state.
  """
  path = os.path.join(workdir, CONFIG_RECORD)
  record = builders.config_record(config)

  def before_restore():
    distributed.barrier("score_sde_config_compared")  # every process has read the old record
    if jax.process_index() == 0:
      atomic_json(path, record)

  plan = dict(abstract_state=exp.abstract_state(), before_restore=before_restore)
  if not (os.path.exists(path) and checkpointing.has_checkpoints(workdir)):
    return plan
  with open(path) as f:
    recorded = json.load(f)
  refused, allowed, changed = builders.config_changes(recorded, config)
  describe = lambda fields: ", ".join(f"config.{k}: {_show(changed[k][0])} -> {_show(changed[k][1])}"
                                      for k in fields)
  if refused:
    raise ConfigChangedError(
        f"{workdir} holds checkpoints of another model or SDE ({path}); refused changes: "
        f"{describe(refused)}. Resume with the recorded values or choose a new --workdir.")
  if allowed:
    log.warning("Resuming %s with config changes: %s", workdir, describe(allowed))
  old_optimizer = builders.recorded_optimizer(recorded, config)
  if old_optimizer is None:
    return plan
  params = plan["abstract_state"].params
  old_shapes = jax.eval_shape(old_optimizer.init, params)
  new_shapes = jax.eval_shape(exp.optimizer.init, params)
  if jax.tree.structure(old_shapes) == jax.tree.structure(new_shapes):
    return plan
  log.warning("The config.optim changes alter the optimiser state's structure: resuming the step, "
              "parameters and EMA of %s with a new optimiser state (Adam's moments and the "
              "learning-rate warm-up restart).", workdir)
  plan["abstract_state"] = plan["abstract_state"].replace(
      opt_state=checkpointing.abstract_like(old_shapes))
  init_opt = jax.jit(exp.optimizer.init, out_shardings=exp.replicated)
  plan["after_restore"] = lambda state: state.replace(opt_state=init_opt(state.params))
  return plan


def _score_trainer(exp: Experiment, workdir: str, eval_iter, plan: dict | None = None,
                   base_params=None) -> loop.Trainer:
  opts = exp.training
  k = opts.n_jitted_steps
  frozen = ("base",) if exp.controlnet is not None else ()
  step = jax.jit(training.make_train_step(exp.train_loss, exp.optimizer, opts.ema_rate,
                                          opts.ema_warmup, frozen),
                 in_shardings=(exp.replicated, distributed.batch_sharding(exp.mesh, 1),
                               exp.replicated),
                 out_shardings=(exp.replicated, exp.replicated), donate_argnums=0)
  eval_step = jax.jit(training.make_eval_step(exp.eval_loss))
  schedule = optim.learning_rate_schedule(opts.lr, opts.warmup)

  @functools.partial(jax.jit, out_shardings=exp.replicated)
  def verify(state, batches, train_key):
    """The state to save gives a finite loss on the step's last batch, with its parameters and
    its EMA: a blown-up update can leave huge but finite parameters."""
    batch = jax.tree.map(lambda b: b[-1], batches)
    key = jax.random.fold_in(train_key, state.step)
    return training.tree_all_finite(eval_step(state.params, batch, key),
                                    eval_step(state.ema_params, batch, key))

  def next_args(it):
    batches = [next(it) for _ in range(k)]  # stacked: images [k, B_local, H, W, C], labels [k, B_local]
    noise = np.stack([b["noise"] for b in batches]) if "noise" in batches[0] else None
    stacked = exp.model_batch(np.stack([b["image"] for b in batches]),
                              np.stack([b["label"] for b in batches]), noise)
    return jax.tree.map(lambda a: exp.to_global(a, batch_axis=1), stacked), exp.train_key

  def log_scalars(step_reached, metrics):
    loss = float(np.asarray(metrics["loss"])[-1])
    grad_norm = float(np.asarray(metrics["grad_norm"])[-1])
    log.info("step %d: loss %.5f, grad norm %.3f", step_reached, loss, grad_norm)
    scalars = {"training_loss": loss, "grad_norm": grad_norm,
               "learning_rate": float(schedule(step_reached - 1))}
    if "num_levels" in metrics:  # the consistency discretisation N(k)
      scalars["num_levels"] = float(np.asarray(metrics["num_levels"])[-1])
    return scalars

  def evaluate(step_reached, state):
    batch = next(eval_iter)
    model_batch = jax.tree.map(jnp.asarray, exp.model_batch(batch["image"], batch["label"],
                                                            batch.get("noise")))
    losses = eval_step(state.ema_params, model_batch, jax.random.fold_in(exp.eval_key, step_reached))
    return {"eval_loss": float(jnp.mean(losses))}

  def after_snapshot(step_reached, state, writer):
    if opts.snapshot_sampling:
      key = jax.random.fold_in(exp.sample_key, step_reached)
      samples, _ = exp.generate(key, state.ema_params, opts.snapshot_num_samples)
      write_sample_grid(exp.inverse_scaler(samples), step_reached, workdir, writer)

  plan = plan or {"abstract_state": exp.abstract_state()}
  return loop.Trainer(
      name="train", init_state=functools.partial(_initial_state, exp, base_params=base_params),
      step=step, verify=verify, **plan,
      open_data=lambda start: exp.dataset(split="train", batch_size=opts.batch_size,
                                          shuffle_seed=exp.seed, start_step=start),
      next_args=next_args, log_scalars=log_scalars, evaluate=evaluate,
      after_snapshot=after_snapshot,
      nonfinite_advice="Lower config.optim.lr, keep config.optim.grad_clip positive, or check "
                       "the data for NaNs.")


def train_classifier(config, workdir: str):
  """Trains the noise-conditional classifier p_t(y | x) into ``workdir/classifier`` (or resumes).

  Minibatches of the training split with their labels; noise levels t ~ U(eps, T) of the config's
  SDE. Logs loss and accuracy, and every classifier.eval_freq steps the test accuracy at t in
  CLASSIFIER_EVAL_TIMES, to TensorBoard and workdir/classifier/accuracy_<step>.json.
  Returns (state, the last accuracy report).
  """
  exp = builders.build_experiment(config)
  c = exp.classifier
  distributed.check_batch_size(c.batch_size, "config.classifier.batch_size")
  out_dir = os.path.join(workdir, "classifier")
  schedule = loop.Schedule(n_iters=c.n_iters, steps_per_call=1, examples_per_step=c.batch_size,
                           log_freq=c.log_freq, eval_freq=c.eval_freq,
                           snapshot_freq=c.snapshot_freq, eval_at_end=True)
  return loop.run(_classifier_trainer(exp, out_dir), schedule, out_dir)


def _classifier_trainer(exp: Experiment, out_dir: str) -> loop.Trainer:
  c = exp.classifier
  optimizer = c.optimizer()
  classifier_key, eval_key = jax.random.split(jax.random.fold_in(exp.root_key, 7))
  init = distributed.jit_initializer(lambda key: classifier_training.init_classifier_state(
      key, exp.classifier_module, optimizer, (1, *exp.image_shape)), exp.mesh)
  loss_fn = classifier_training.noisy_classifier_loss_fn(exp.sde, exp.classifier_fn,
                                                         exp.sde.default_eps)
  eval_loss_fn = jax.jit(functools.partial(classifier_training.noisy_classifier_loss_at, exp.sde,
                                           exp.classifier_fn))
  batch_sharding = distributed.batch_sharding(exp.mesh, 0)
  step = jax.jit(classifier_training.make_classifier_step(loss_fn, optimizer),
                 in_shardings=(exp.replicated, batch_sharding, batch_sharding, exp.replicated),
                 out_shardings=(exp.replicated, exp.replicated), donate_argnums=0)

  def next_args(it):
    batch = next(it)
    labels = check_class_labels(batch["label"], c.num_classes, "config.classifier.num_classes",
                                exp.data.dataset)
    return exp.to_global(exp.scaler(batch["image"])), exp.to_global(labels), classifier_key

  def evaluate(step_reached, state):
    report = classifier_test_accuracy(exp, eval_loss_fn, state.params,
                                      jax.random.fold_in(eval_key, step_reached),
                                      CLASSIFIER_EVAL_TIMES)
    log.info("classifier step %d: %s", step_reached, report)
    if jax.process_index() == 0:
      atomic_json(os.path.join(out_dir, f"accuracy_{step_reached}.json"),
                  {"step": step_reached, **report})
    return report

  return loop.Trainer(
      name="classifier", init_state=lambda: init(classifier_key),
      abstract_state=abstract_classifier_state(exp), step=step,
      open_data=lambda start: exp.dataset(split="train", batch_size=c.batch_size,
                                          shuffle_seed=exp.seed + 7, start_step=start),
      next_args=next_args,
      log_scalars=lambda _, m: {"classifier_loss": float(m["loss"]),
                                "classifier_accuracy": float(m["accuracy"])},
      evaluate=evaluate, nonfinite_advice="Lower config.classifier.lr.")


def classifier_test_accuracy(exp: Experiment, loss_fn, params, key, times) -> dict:
  """Test-split accuracy of the classifier at fixed diffusion times (one noise draw per image)."""
  correct = {t: 0.0 for t in times}
  count = 0
  with exp.dataset(split="test", batch_size=exp.eval.batch_size, num_epochs=1, evaluation=True,
                   drop_remainder=False) as it:
    for i, batch in enumerate(it):
      images = jnp.asarray(exp.scaler(batch["image"]))
      labels = check_class_labels(batch["label"], exp.classifier.num_classes,
                                  "config.classifier.num_classes", exp.data.dataset)
      for t in times:
        _, aux = loss_fn(params, jax.random.fold_in(key, i), images, jnp.asarray(labels),
                         jnp.full((len(labels),), t, images.dtype))
        correct[t] += float(np.asarray(aux["correct"])[batch["mask"]].sum())
      count += int(batch["mask"].sum())
  return {f"accuracy_t{t:g}": correct[t] / count for t in times}

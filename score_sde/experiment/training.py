"""Train state and the compiled training/evaluation steps.

One jitted call runs ``n_jitted_steps`` optimiser steps (unrolled). Randomness is derived
from the step alone, ``fold_in(train_key, step)``, and the noise for the whole global batch is drawn
inside jit, so a step gives identical results on any number of devices or processes.

Data batches are dicts: 'image' [B, H, W, C] and, for a class-conditional network, 'label' int [B]
(passed to the loss as ``class_labels``).
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from score_sde.diffusion.losses import LossFn

Params = Any


@struct.dataclass
class TrainState:
  """Everything that changes during training and is checkpointed."""

  step: jax.Array  # int32 scalar: number of optimiser steps taken
  params: Params
  ema_params: Params
  opt_state: optax.OptState


@struct.dataclass
class ConsistencyTrainState(TrainState):
  """The train state of a consistency objective (``diffusion/consistency.py``): also the target
  network θ⁻ of the consistency loss, an EMA of the student at the rate μ(k) the loss reports as
  ``aux['target_decay']`` (Song et al. 2023, Algorithms 2-3), kept apart from ``ema_params``, the
  evaluation EMA at ``config.model.ema_rate``."""

  target_params: Params


def linen_model_fn(module: nn.Module, compute_dtype=jnp.float32, batch_chunk: int = 0) -> Callable:
  """Adapts a linen module to ``model_fn(params, x, labels, train=, rng=, class_labels=None)``.

  ``class_labels`` int [B], ``low_res`` [B, h, w, C'] with ``aug_level`` [B] of a
  super-resolution network, and the control image ``hint`` with ``control_scale`` of a ControlNet,
  are forwarded only when given, so other modules keep their call.

  ``compute_dtype`` (``config.model.compute_dtype``, e.g. bfloat16 mixed precision): the images
  x, ``low_res`` and ``hint`` are cast to it and the networks (ncsnpp, ddpm, dit) compute in their
  input's dtype, casting the float32 parameters at use; the output is cast back to float32, so the
  loss is float32 and the gradients reach float32 parameters. Noise labels and ``aug_level`` stay
  float32: the networks embed them in float32 (sin/cos of arguments up to ~1e3).

  ``batch_chunk`` (``config.model.batch_chunk``) > 0 applies the network to consecutive chunks of
  that many examples and concatenates the outputs (the last chunk may be smaller): the same
  function, since the networks have no cross-example operation, but smaller working sets and
  independent branches for XLA:CPU's threads (docs/performance.md, "Batch chunks"). Chunk i's
  dropout key is ``fold_in(rng, i)``.
  """

  def apply(params, x, labels, train, rng, class_labels, low_res, aug_level, hint, control_scale):
    rngs = {"dropout": rng} if (train and rng is not None) else None
    extra = {} if class_labels is None else {"class_labels": class_labels}
    if low_res is not None:  # a super-resolution network (experiment/super_resolution.py)
      extra.update(low_res=low_res.astype(compute_dtype), aug_level=aug_level)
    if hint is not None:  # a ControlNet (experiment/controlnet.py)
      extra.update(hint=hint.astype(compute_dtype), control_scale=control_scale)
    out = module.apply({"params": params}, x.astype(compute_dtype), labels, train=train, rngs=rngs,
                       **extra)
    return out.astype(jnp.float32)

  def model_fn(params, x, labels, *, train: bool = False, rng=None, class_labels=None,
               low_res=None, aug_level=None, hint=None, control_scale=1.0):
    n = x.shape[0]
    if not batch_chunk or n <= batch_chunk:
      return apply(params, x, labels, train, rng, class_labels, low_res, aug_level, hint,
                   control_scale)
    per_example = lambda a, i: (a[i:i + batch_chunk] if a is not None and jnp.ndim(a)
                                and a.shape[0] == n else a)
    return jnp.concatenate([
        apply(params, x[i:i + batch_chunk], per_example(labels, i), train,
              None if rng is None else jax.random.fold_in(rng, i // batch_chunk),
              *(per_example(a, i) for a in (class_labels, low_res, aug_level, hint, control_scale)))
        for i in range(0, n, batch_chunk)])

  return model_fn


def null_class_model_fn(model_fn: Callable, num_classes: int) -> Callable:
  """The unconditional model of a class-conditional network: every label is the null class K."""

  def unconditional(params, x, labels, **kwargs):
    return model_fn(params, x, labels, class_labels=jnp.full(x.shape[:1], num_classes, jnp.int32),
                    **kwargs)

  return unconditional


def init_train_state(key: jax.Array, module: nn.Module, optimizer: optax.GradientTransformation,
                     input_shape: tuple[int, ...], num_classes: int = 0,
                     with_target: bool = False, low_res_factor: int = 1,
                     control_shape: tuple[int, int, int] | None = None) -> TrainState:
  """Initialises parameters on a dummy batch of ``input_shape`` [B, H, W, C].

  ``num_classes`` > 0: the module is class-conditional and is initialised with null-class labels.
  ``with_target``: a `ConsistencyTrainState` whose target network starts at the parameters.
  ``low_res_factor`` > 1: a super-resolution network, initialised with a zero low-resolution input.
  ``control_shape`` [H, W, C]: a ControlNet's controlled model, initialised with zero control images.
  """
  x = jnp.zeros(input_shape, jnp.float32)
  labels = jnp.zeros(input_shape[:1], jnp.int32)
  class_kw = {"class_labels": jnp.full(input_shape[:1], num_classes, jnp.int32)} if num_classes else {}
  if low_res_factor > 1:  # a super-resolution network takes the downsampled image too
    b, h, w, c = input_shape
    class_kw.update(low_res=jnp.zeros((b, h // low_res_factor, w // low_res_factor, c)),
                    aug_level=jnp.zeros((b,)))
  if control_shape is not None:
    class_kw["hint"] = jnp.zeros((input_shape[0], *control_shape))
  params = module.init({"params": key, "dropout": key}, x, labels, train=False,
                       **class_kw)["params"]
  fields = dict(step=jnp.zeros((), jnp.int32), params=params,
                ema_params=jax.tree.map(jnp.copy, params),  # separate buffers: the state is donated
                opt_state=optimizer.init(params))
  if with_target:
    return ConsistencyTrainState(**fields, target_params=jax.tree.map(jnp.copy, params))
  return TrainState(**fields)


def _ema(average, params, decay):
  return jax.tree.map(lambda e, p: (decay * e + (1.0 - decay) * p).astype(e.dtype), average, params)


def ema_decay(step: jax.Array, ema_rate: float, warmup: bool) -> jax.Array:
  """Decay of the EMA update that follows ``step`` optimiser steps.

  With ``warmup`` it is min(r, (1 + n) / (10 + n)) with n = step + 1 the number of EMA updates so
  far, the warm-up of the PyTorch reference (score_sde_pytorch ``models/ema.py``): the early
  averages forget the random initialisation, whose weight after n steps is prod_k decay_k instead
  of r^n (0.999^2500 = 8 %). Without it, the constant r of the JAX reference.
  """
  if not warmup:
    return jnp.asarray(ema_rate, jnp.float32)
  n = (step + 1).astype(jnp.float32)
  return jnp.minimum(ema_rate, (1.0 + n) / (10.0 + n))


def tree_all_finite(*trees) -> jax.Array:
  """Whether every floating leaf of ``trees`` is finite (bool scalar): one reduction over the
  concatenated leaves, where a reduction per leaf compiled into one XLA fusion per leaf (25 % of
  a tiny model's train-step compile time on XLA:CPU)."""
  leaves = [jnp.ravel(x) for x in jax.tree.leaves(trees) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.isfinite(jnp.concatenate(leaves))) if leaves else jnp.asarray(True)


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation,
                    ema_rate: float, ema_warmup: bool = True, frozen: tuple[str, ...] = ()) -> Callable:
  """Returns ``train_step(state, batches, train_key) -> (state, metrics [K])``.

  The EMA decays at ``ema_decay(step, ema_rate, ema_warmup)``. A `ConsistencyTrainState` also
  passes ``target_params`` and ``step`` to the loss and moves its target network at the loss's
  ``aux['target_decay']``; the metrics then hold the loss's 'num_levels' too. The EMA of the
  ``frozen`` top-level parameter groups (a ControlNet's 'base') is those parameters themselves, so
  they stay bitwise unchanged. The metrics' 'finite'
  says that the loss and the updated params and EMA are all finite (the loop's check before saves).

  ``batches``: {'image': [K, B, H, W, C]} plus 'label' int [K, B] for a class-conditional loss and
  'noise' [K, B, H, W, C] for a loss on (noise, data) couplings (reflow).
  """

  def one_step(state: TrainState, batch, train_key):
    key = jax.random.fold_in(train_key, state.step)
    consistency = isinstance(state, ConsistencyTrainState)
    extra = {"noise": batch["noise"]} if "noise" in batch else {}
    if consistency:
      extra.update(target_params=state.target_params, step=state.step)
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, key, batch["image"], batch.get("label"), **extra)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = _ema(state.ema_params, params, ema_decay(state.step, ema_rate, ema_warmup))
    if frozen:
      ema = {**ema, **{k: params[k] for k in frozen}}
    fields = dict(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
               "finite": tree_all_finite(loss, fields["params"], fields["ema_params"])}
    if consistency:
      target = _ema(state.target_params, params, aux["target_decay"])
      metrics["num_levels"] = aux["num_levels"]
      return ConsistencyTrainState(**fields, target_params=target), metrics
    return TrainState(**fields), metrics

  def train_step(state: TrainState, batches, train_key):
    # A Python loop, unrolled at trace time, rather than lax.scan: XLA:CPU runs the backward
    # convolutions ~10x slower inside a while-loop body (experiments/bench_train_step.py).
    metrics = []
    for i in range(batches["image"].shape[0]):
      state, m = one_step(state, jax.tree.map(lambda b: b[i], batches), train_key)
      metrics.append(m)
    return state, jax.tree.map(lambda *xs: jnp.stack(xs), *metrics)

  return train_step


def make_eval_step(loss_fn: LossFn) -> Callable:
  """Returns ``eval_step(params, batch, key) -> per-sample losses [B]``.

  ``batch``: {'image': [B, H, W, C]} plus 'label' int [B] for a class-conditional loss and 'noise'
  for couplings. A consistency loss is evaluated against its own stop-gradient parameters.
  """

  def eval_step(params, batch, key):
    extra = {"noise": batch["noise"]} if "noise" in batch else {}
    return loss_fn(params, key, batch["image"], batch.get("label"), **extra)[1]["losses"]

  return eval_step

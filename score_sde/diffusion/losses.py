"""Denoising score-matching losses (Song et al., ICLR 2021, eq. 7; Song & Ermon 2019; Ho et al. 2020).

Every loss is a pure function ``loss_fn(params, key, batch, class_labels=None) -> (loss, aux)``
built from a network ``model_fn(params, x, labels, train=, rng=)`` and an SDE. ``batch`` is the data
x_0 [B, ...]; ``aux['losses']`` holds the per-sample losses [B] (useful for standard errors).

Class-conditional training for classifier-free guidance (Ho & Salimans 2022, Algorithm 1): a loss
built with ``num_classes`` K > 0 takes ``class_labels`` int [B] in 0..K-1, replaces each by the null
class K with probability ``class_dropout`` and calls ``model_fn(..., class_labels=)``. The dropout
key is split off first, ``key, k_class = split(key)``, and the rest of the loss draws from ``key``
exactly as an unconditional loss does.
"""
from __future__ import annotations

from typing import Callable

from typing import Optional

import jax
import jax.numpy as jnp

from score_sde.diffusion.sde import SDE, batch_broadcast, get_score_fn

# (params, key, batch [B, ...], class_labels [B] or None) -> (loss, aux)
LossFn = Callable[..., tuple[jax.Array, dict]]


def drop_class_labels(key: jax.Array, class_labels: jax.Array, num_classes: int,
                      p: float) -> jax.Array:
  """Replaces each label [B] by the null class ``num_classes`` with probability p (Ho & Salimans)."""
  drop = jax.random.bernoulli(key, p, class_labels.shape)
  return jnp.where(drop, num_classes, class_labels).astype(jnp.int32)


def _check_class_options(num_classes: int, class_dropout: float) -> None:
  if num_classes < 0:
    raise ValueError(f"num_classes (config.model.num_classes) must be >= 0, got {num_classes}.")
  if not 0.0 <= class_dropout <= 1.0:
    raise ValueError(f"class_dropout (config.training.class_dropout) is a probability in [0, 1], "
                     f"got {class_dropout}.")


def _class_conditioning(key: jax.Array, class_labels: Optional[jax.Array], num_classes: int,
                        class_dropout: float) -> tuple[jax.Array, dict]:
  """(key for the rest of the loss, keyword arguments of model_fn carrying the dropped-out labels)."""
  if class_labels is None:
    if num_classes:
      raise ValueError(f"This loss trains a class-conditional network (num_classes={num_classes}):"
                       " pass class_labels int [B], e.g. the 'label' of the data batches.")
    return key, {}
  if not num_classes:
    raise ValueError("class_labels were given to the loss of an unconditional network; build the "
                     "loss and network with num_classes > 0 (config.model.num_classes) or drop them.")
  key, k_class = jax.random.split(key)
  return key, {"class_labels": drop_class_labels(k_class, class_labels, num_classes, class_dropout)}


def _reducer(reduce_mean: bool) -> Callable[[jax.Array], jax.Array]:
  """Per-sample reduction over non-batch axes: mean, or half the sum (reference semantics)."""
  if reduce_mean:
    return lambda x: jnp.mean(x.reshape(x.shape[0], -1), axis=-1)
  return lambda x: 0.5 * jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


def get_sde_loss_fn(sde: SDE, model_fn: Callable, *, train: bool, reduce_mean: bool = True,
                    continuous: bool = True, likelihood_weighting: bool = False,
                    eps: float = 1e-5, num_classes: int = 0,
                    class_dropout: float = 0.0) -> LossFn:
  """Continuous-time DSM (eq. 7), t ~ U(eps, T), x_t = m(t) x_0 + std(t) z.

  Plain weighting lambda(t) = std(t)^2: reduce(||s std + z||^2).
  Likelihood weighting lambda(t) = g(t)^2 (Song et al. 2021b): reduce(||s + z / std||^2) g(t)^2.
  """
  reduce = _reducer(reduce_mean)
  _check_class_options(num_classes, class_dropout)

  def loss_fn(params, key, batch, class_labels=None):
    key, class_kw = _class_conditioning(key, class_labels, num_classes, class_dropout)
    k_t, k_z, k_drop = jax.random.split(key, 3)
    t = jax.random.uniform(k_t, (batch.shape[0],), batch.dtype, minval=eps, maxval=sde.T)
    z = jax.random.normal(k_z, batch.shape, batch.dtype)
    mean, std = sde.marginal_prob(batch, t)
    x_t = mean + batch_broadcast(std, batch) * z
    score_fn = get_score_fn(sde, model_fn, params, continuous=continuous, train=train, rng=k_drop,
                            **class_kw)
    score = score_fn(x_t, t)
    if likelihood_weighting:
      g2 = sde.diffusion_coef(t) ** 2
      losses = reduce(jnp.square(score + z / batch_broadcast(std, batch))) * g2
    else:
      losses = reduce(jnp.square(score * batch_broadcast(std, batch) + z))
    return jnp.mean(losses), {"losses": losses}

  return loss_fn


def get_smld_loss_fn(vesde, model_fn: Callable, *, train: bool, reduce_mean: bool = False,
                     num_classes: int = 0, class_dropout: float = 0.0) -> LossFn:
  """Discrete SMLD loss (Song & Ermon 2019, eq. 5): reduce(||s + n / sigma^2||^2) sigma^2.

  Noise levels are indexed in descending order, the network's label convention.
  """
  reduce = _reducer(reduce_mean)
  sigmas_desc = jnp.flip(vesde.discrete_sigmas)
  _check_class_options(num_classes, class_dropout)

  def loss_fn(params, key, batch, class_labels=None):
    key, class_kw = _class_conditioning(key, class_labels, num_classes, class_dropout)
    k_i, k_n, k_drop = jax.random.split(key, 3)
    labels = jax.random.randint(k_i, (batch.shape[0],), 0, vesde.N)
    sigma = batch_broadcast(sigmas_desc[labels].astype(batch.dtype), batch)
    noise = jax.random.normal(k_n, batch.shape, batch.dtype) * sigma
    score = model_fn(params, batch + noise, labels, train=train, rng=k_drop, **class_kw)
    losses = reduce(jnp.square(score + noise / sigma**2)) * sigma.reshape(-1) ** 2
    return jnp.mean(losses), {"losses": losses}

  return loss_fn


def get_ddpm_loss_fn(vpsde, model_fn: Callable, *, train: bool, reduce_mean: bool = True,
                     num_classes: int = 0, class_dropout: float = 0.0) -> LossFn:
  """Discrete DDPM loss (Ho et al. 2020, eq. 14): epsilon-prediction MSE at a random step."""
  reduce = _reducer(reduce_mean)
  _check_class_options(num_classes, class_dropout)

  def loss_fn(params, key, batch, class_labels=None):
    key, class_kw = _class_conditioning(key, class_labels, num_classes, class_dropout)
    k_i, k_n, k_drop = jax.random.split(key, 3)
    labels = jax.random.randint(k_i, (batch.shape[0],), 0, vpsde.N)
    sqrt_ab = batch_broadcast(vpsde.sqrt_alphas_cumprod[labels].astype(batch.dtype), batch)
    sqrt_1m_ab = batch_broadcast(vpsde.sqrt_1m_alphas_cumprod[labels].astype(batch.dtype), batch)
    noise = jax.random.normal(k_n, batch.shape, batch.dtype)
    eps_pred = model_fn(params, sqrt_ab * batch + sqrt_1m_ab * noise, labels, train=train,
                        rng=k_drop, **class_kw)
    losses = reduce(jnp.square(eps_pred - noise))
    return jnp.mean(losses), {"losses": losses}

  return loss_fn


DISCRETE_LOSSES = {"smld": get_smld_loss_fn, "ddpm": get_ddpm_loss_fn}


def get_loss_fn(sde: SDE, model_fn: Callable, *, train: bool, reduce_mean: bool = False,
                continuous: bool = True, likelihood_weighting: bool = False,
                eps: float = 1e-5, num_classes: int = 0, class_dropout: float = 0.0) -> LossFn:
  """Selects the loss from the reference config fields (``config.training.*``).

  ``num_classes`` > 0 makes it class-conditional with label dropout ``class_dropout``.

  Raises ValueError for combinations that are not defined.
  """
  if continuous:
    return get_sde_loss_fn(sde, model_fn, train=train, reduce_mean=reduce_mean, continuous=True,
                           likelihood_weighting=likelihood_weighting, eps=eps,
                           num_classes=num_classes, class_dropout=class_dropout)
  if likelihood_weighting:
    raise ValueError("likelihood_weighting=True requires continuous=True: discrete SMLD/DDPM "
                     "training has no likelihood weighting. Set training.continuous=True or "
                     "training.likelihood_weighting=False.")
  if sde.discrete_loss is None:
    raise ValueError(f"Discrete training is not defined for {type(sde).__name__}; only VESDE "
                     "(SMLD) and VPSDE (DDPM) have a discrete loss. Set training.continuous=True.")
  return DISCRETE_LOSSES[sde.discrete_loss](sde, model_fn, train=train, reduce_mean=reduce_mean,
                                            num_classes=num_classes, class_dropout=class_dropout)

"""Training objectives: denoising score matching (Song et al., ICLR 2021, eq. 7; Song & Ermon 2019;
Ho et al. 2020), the EDM loss (Karras et al., NeurIPS 2022, eq. 2 and 8) and flow matching
(Lipman et al. 2023; rectified flow, Liu et al. 2023, eq. 1).

Every objective is a pure function ``loss_fn(params, key, images, class_labels=None) -> (loss, aux)``
built from a network ``model_fn(params, x, labels, train=, rng=)`` and an SDE. ``images`` is the
data x_0 [B, ...]; ``aux['losses']`` holds the per-sample losses [B] (useful for standard errors)
and ``loss`` is their mean. ``OBJECTIVES`` names them; ``get_loss_fn`` builds one from the config
fields, and ``parametrization.sampling_model`` turns the trained network into a sampler's model.

Class-conditional training for classifier-free guidance (Ho & Salimans 2022, Algorithm 1): a loss
built with ``num_classes`` K > 0 takes ``class_labels`` int [B] in 0..K-1, replaces each by the null
class K with probability ``class_dropout`` and calls ``model_fn(..., class_labels=)``. The dropout
key is split off first, ``key, k_class = split(key)``, and the rest of the loss draws from ``key``
exactly as an unconditional loss does.
"""
from __future__ import annotations

import inspect
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from score_sde.diffusion import parametrization
from score_sde.diffusion.sde import SDE, batch_broadcast, get_score_fn

# (params, key, images [B, ...], class_labels [B] or None) -> (loss, aux)
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

  Plain weighting λ(t) = std(t)^2: reduce(||ε̂ - z||^2) with ε̂ = -std s.
  Likelihood weighting λ(t) = g(t)^2 (Song et al. 2021b): reduce(||s - s(z)||^2) g(t)^2 with
  s(z) = -z / std, the score of the perturbation kernel.
  """
  reduce = _reducer(reduce_mean)
  _check_class_options(num_classes, class_dropout)

  def loss_fn(params, key, images, class_labels=None):
    key, class_kw = _class_conditioning(key, class_labels, num_classes, class_dropout)
    k_t, k_z, k_drop = jax.random.split(key, 3)
    t = jax.random.uniform(k_t, (images.shape[0],), images.dtype, minval=eps, maxval=sde.T)
    z = jax.random.normal(k_z, images.shape, images.dtype)
    mean, std = sde.marginal_prob(images, t)
    std = batch_broadcast(std, images)
    x_t = mean + std * z
    score_fn = get_score_fn(sde, model_fn, params, continuous=continuous, train=train, rng=k_drop,
                            **class_kw)
    score = score_fn(x_t, t)
    if likelihood_weighting:
      g2 = sde.diffusion_coef(t) ** 2
      losses = reduce(jnp.square(score - parametrization.score_from_noise(z, std))) * g2
    else:
      losses = reduce(jnp.square(z - parametrization.noise_from_score(score, std)))
    return jnp.mean(losses), {"losses": losses}

  return loss_fn


def get_smld_loss_fn(vesde, model_fn: Callable, *, train: bool, reduce_mean: bool = False,
                     num_classes: int = 0, class_dropout: float = 0.0) -> LossFn:
  """Discrete SMLD loss (Song & Ermon 2019, eq. 5): reduce(||s + n / σ^2||^2) σ^2 with n = σ z, the
  score of the perturbation kernel being -n / σ^2 = -z / σ.

  Noise levels are indexed in descending order, the network's label convention.
  """
  reduce = _reducer(reduce_mean)
  sigmas_desc = jnp.flip(vesde.discrete_sigmas)
  _check_class_options(num_classes, class_dropout)

  def loss_fn(params, key, images, class_labels=None):
    key, class_kw = _class_conditioning(key, class_labels, num_classes, class_dropout)
    k_i, k_n, k_drop = jax.random.split(key, 3)
    labels = jax.random.randint(k_i, (images.shape[0],), 0, vesde.N)
    sigma = batch_broadcast(sigmas_desc[labels].astype(images.dtype), images)
    z = jax.random.normal(k_n, images.shape, images.dtype)
    score = model_fn(params, images + sigma * z, labels, train=train, rng=k_drop, **class_kw)
    target = parametrization.score_from_noise(z, sigma)
    losses = reduce(jnp.square(score - target)) * sigma.reshape(-1) ** 2
    return jnp.mean(losses), {"losses": losses}

  return loss_fn


def get_ddpm_loss_fn(vpsde, model_fn: Callable, *, train: bool, reduce_mean: bool = True,
                     num_classes: int = 0, class_dropout: float = 0.0) -> LossFn:
  """Discrete DDPM loss (Ho et al. 2020, eq. 14): ε-prediction MSE at a random step."""
  reduce = _reducer(reduce_mean)
  _check_class_options(num_classes, class_dropout)

  def loss_fn(params, key, images, class_labels=None):
    key, class_kw = _class_conditioning(key, class_labels, num_classes, class_dropout)
    k_i, k_n, k_drop = jax.random.split(key, 3)
    labels = jax.random.randint(k_i, (images.shape[0],), 0, vpsde.N)
    sqrt_ab = batch_broadcast(vpsde.sqrt_alphas_cumprod[labels].astype(images.dtype), images)
    sqrt_1m_ab = batch_broadcast(vpsde.sqrt_1m_alphas_cumprod[labels].astype(images.dtype), images)
    noise = jax.random.normal(k_n, images.shape, images.dtype)
    eps_pred = model_fn(params, sqrt_ab * images + sqrt_1m_ab * noise, labels, train=train,
                        rng=k_drop, **class_kw)
    losses = reduce(jnp.square(eps_pred - noise))
    return jnp.mean(losses), {"losses": losses}

  return loss_fn


def get_edm_loss_fn(sde: SDE, model_fn: Callable, *, train: bool, reduce_mean: bool = True,
                    sigma_data: float = 0.5, p_mean: float = -1.2, p_std: float = 1.2,
                    num_classes: int = 0, class_dropout: float = 0.0) -> LossFn:
  """EDM loss (eq. 2 with Table 1): ln σ ~ N(P_mean, P_std^2), λ(σ) = (σ^2 + σ_d^2) / (σ σ_d)^2,
  loss = λ(σ) reduce(||D(x_0 + σ n, σ) - x_0||^2), D the preconditioned network (``precondition``).

  The loss lives in σ, whatever the SDE; ``sde`` only maps σ to time when sampling. With λ(σ)
  the effective target of the network has unit variance: for data N(0, σ_d^2 I) the exact
  denoiser scores 1 per dimension at every σ (with ``reduce_mean``).
  """
  del sde
  reduce = _reducer(reduce_mean)
  denoiser_fn = parametrization.precondition(model_fn, sigma_data)
  _check_class_options(num_classes, class_dropout)

  def loss_fn(params, key, images, class_labels=None):
    key, class_kw = _class_conditioning(key, class_labels, num_classes, class_dropout)
    k_sigma, k_n, k_drop = jax.random.split(key, 3)
    sigma = jnp.exp(p_mean + p_std * jax.random.normal(k_sigma, (images.shape[0],), images.dtype))
    noise = jax.random.normal(k_n, images.shape, images.dtype)
    x_sigma = images + batch_broadcast(sigma, images) * noise
    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    denoised = denoiser_fn(params, x_sigma, sigma, train=train, rng=k_drop, **class_kw)
    losses = weight * reduce(jnp.square(denoised - images))
    return jnp.mean(losses), {"losses": losses}

  return loss_fn


TIME_SAMPLINGS = ("uniform", "logit_normal", "max")


def _check_time_sampling(time_sampling: str, logit_std: float) -> None:
  if time_sampling not in TIME_SAMPLINGS:
    raise ValueError(f"Unknown time_sampling {time_sampling!r} (training.time_sampling) of the "
                     f"'flow_matching' objective; valid choices are {TIME_SAMPLINGS}.")
  if time_sampling == "logit_normal" and not logit_std > 0:
    raise ValueError(f"logit_std (training.logit_std) must be > 0; got {logit_std}.")


def get_flow_matching_loss_fn(sde: SDE, model_fn: Callable, *, train: bool,
                              reduce_mean: bool = True, num_classes: int = 0,
                              class_dropout: float = 0.0, eps: float = 1e-3,
                              time_sampling: str = "uniform", logit_mean: float = 0.0,
                              logit_std: float = 1.0) -> LossFn:
  """Conditional flow matching: reduce(||v_θ(x_t, t) - (m'(t) x_0 + std'(t) z)||^2) with
  x_t = m(t) x_0 + std(t) z, the network fed ``sde.noise_labels(t, True)``. For rectified flow the
  target is z - x_0 (Liu et al. 2023, eq. 1); on any SDE it is the velocity of the path, whose
  conditional mean is the probability-flow drift (``parametrization.velocity_prediction``).

  Time: t ~ U(eps, T) ('uniform'); t = T sigmoid(n), n ~ N(logit_mean, logit_std^2), clipped to
  [eps, T] ('logit_normal', Esser et al. 2024, SD3's default (0, 1)); or t = T ('max', one-step
  distillation of a rectified flow on its couplings).

  ``loss_fn(params, key, images, class_labels=None, noise=None)``: ``noise`` [B, ...], when given,
  is the z paired with each image instead of a fresh draw: training on the (z, x_0) couplings of a
  previous flow is reflow, k-rectified flow (Liu et al. 2023, Algorithm 1). The key draws t (and
  network dropout) either way.
  """
  reduce = _reducer(reduce_mean)
  _check_class_options(num_classes, class_dropout)
  _check_time_sampling(time_sampling, logit_std)

  def sample_time(key, batch, dtype):
    if time_sampling == "uniform":
      return jax.random.uniform(key, (batch,), dtype, minval=eps, maxval=sde.T)
    if time_sampling == "logit_normal":
      n = logit_mean + logit_std * jax.random.normal(key, (batch,), dtype)
      return jnp.clip(sde.T * jax.nn.sigmoid(n), eps, sde.T)
    return jnp.full((batch,), sde.T, dtype)

  def loss_fn(params, key, images, class_labels=None, noise=None):
    key, class_kw = _class_conditioning(key, class_labels, num_classes, class_dropout)
    k_t, k_z, k_drop = jax.random.split(key, 3)
    t = sample_time(k_t, images.shape[0], images.dtype)
    z = jax.random.normal(k_z, images.shape, images.dtype) if noise is None else noise
    m, std, dm, dstd = (batch_broadcast(c, images)
                        for c in parametrization.marginal_coefficients(sde, t))
    x_t = m * images + std * z
    v = model_fn(params, x_t, sde.noise_labels(t, True), train=train, rng=k_drop, **class_kw)
    losses = reduce(jnp.square(v - (dm * images + dstd * z)))
    return jnp.mean(losses), {"losses": losses}

  return loss_fn


OBJECTIVES = {"dsm": get_sde_loss_fn, "smld": get_smld_loss_fn, "ddpm": get_ddpm_loss_fn,
              "edm": get_edm_loss_fn, "flow_matching": get_flow_matching_loss_fn}


def default_objective(sde: SDE, continuous: bool) -> str:
  """The objective of the reference configs: 'dsm' when continuous, else the SDE's discrete loss."""
  if continuous:
    return "dsm"
  if sde.discrete_loss is None:
    raise ValueError(f"Discrete training is not defined for {type(sde).__name__}; only VESDE "
                     "(SMLD) and VPSDE (DDPM) have a discrete loss. Set training.continuous=True.")
  return sde.discrete_loss


def get_loss_fn(objective: Optional[str], sde: SDE, model_fn: Callable, *, train: bool,
                reduce_mean: bool = False, continuous: bool = True,
                likelihood_weighting: bool = False, num_classes: int = 0,
                class_dropout: float = 0.0, **options) -> LossFn:
  """Builds the objective named ``objective`` (``config.training.loss``, a key of ``OBJECTIVES``);
  None selects ``default_objective``.

  ``num_classes`` > 0 makes it class-conditional with label dropout ``class_dropout``. 'dsm' takes
  ``continuous`` and ``likelihood_weighting``; ``options`` are the keyword options of the
  objective's builder (``OBJECTIVES[objective]``): 'dsm' ``eps``; 'edm' ``sigma_data``, ``p_mean``,
  ``p_std``; 'flow_matching' ``eps``, ``time_sampling``, ``logit_mean``, ``logit_std``; the
  consistency objectives those of ``consistency.py``. Raises ValueError for combinations that are
  not defined and for an option the objective does not take.
  """
  if likelihood_weighting and not continuous:
    raise ValueError("likelihood_weighting=True requires continuous=True: discrete SMLD/DDPM "
                     "training has no likelihood weighting. Set training.continuous=True or "
                     "training.likelihood_weighting=False.")
  if objective is None:
    objective = default_objective(sde, continuous)
  if objective not in OBJECTIVES:
    raise ValueError(f"Unknown objective {objective!r} (training.loss); valid choices are "
                     f"{sorted(OBJECTIVES)}, or None for the default.")
  if likelihood_weighting and objective != "dsm":
    raise ValueError(f"likelihood_weighting applies to the 'dsm' objective only, not "
                     f"{objective!r}. Set training.likelihood_weighting=False.")
  if objective in ("smld", "ddpm"):
    if sde.discrete_loss != objective:
      raise ValueError(f"The discrete {objective!r} objective is not defined for "
                       f"{type(sde).__name__}; 'smld' needs a VESDE and 'ddpm' a VPSDE.")
    if continuous:
      raise ValueError(f"The {objective!r} objective trains on discrete noise levels; set "
                       "training.continuous=False so that sampling uses the same labels.")
  builder = OBJECTIVES[objective]
  common = ("train", "reduce_mean", "num_classes", "class_dropout")
  accepted = [name for name, p in inspect.signature(builder).parameters.items()
              if p.kind == p.KEYWORD_ONLY and name not in common]
  unknown = sorted(set(options) - set(accepted))
  if unknown:
    raise ValueError(f"The {objective!r} objective takes no option {unknown}; its options are "
                     f"{accepted}.")
  if objective == "dsm":
    options = dict(options, continuous=continuous, likelihood_weighting=likelihood_weighting)
  return builder(sde, model_fn, train=train, reduce_mean=reduce_mean, num_classes=num_classes,
                 class_dropout=class_dropout, **options)


# Consistency models (consistency.py): imported last, as it uses the helpers above inside its builders.
from score_sde.diffusion import consistency  # noqa: E402

OBJECTIVES.update(consistency.OBJECTIVES)

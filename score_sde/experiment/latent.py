"""Latent diffusion (Rombach et al. 2022, Sec. 3.2): a score model of any SDE, objective and sampler
on z = scale_factor · E(x), with E the KL autoencoder of another work directory.

`LatentSpace` is what `builders.build_experiment` attaches to an `Experiment` when
config.latent.autoencoder_workdir is set: the training and evaluation losses encode each batch on
the fly (a posterior draw, as LDM's `get_first_stage_encoding`), and every sampler's output is
decoded, so sample grids, `--mode sample` and the FID/FDD of `--mode eval` are of decoded images.
Bits/dim are not reported: the probability-flow likelihood is of the scaled latents, not of the
data (check_config refuses eval.enable_bpd).

The scale factor is 1/std of the encoded training latents, computed once when the autoencoder run
finished and stored beside its checkpoint (`latent_scale.json`, for that checkpoint's step), or
config.latent.scale_factor when positive (Stable Diffusion's VAE: 0.18215).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax

from score_sde.experiment import autoencoder
from score_sde.io import checkpointing


@dataclasses.dataclass(frozen=True)
class LatentSpace:
  spec: dict  # the autoencoder run's autoencoder.json
  params: Any  # the autoencoder's parameters (replicated)
  scale_factor: float
  shape: tuple[int, int, int]  # [h, w, c] of a latent
  workdir: str  # the autoencoder's run
  step: int  # its checkpoint

  def encode(self, key, images):
    """Model-space images [B, H, W, C] -> scaled latents [B, h, w, c] (a posterior draw)."""
    return self.scale_factor * autoencoder.encode_fn(self.spec)(self.params, key, images)

  def decode(self, z):
    """Scaled latents -> model-space images."""
    return autoencoder.decode_fn(self.spec)(self.params, z / self.scale_factor)

  def describe(self) -> dict:
    """What samples of a latent model depend on besides the score network (for sample shards)."""
    return {"autoencoder_workdir": os.path.abspath(self.workdir), "autoencoder_step": self.step,
            "scale_factor": self.scale_factor}


def load_latent_space(workdir: str, scale_factor: float, *, image_size: int, num_channels: int,
                      centered: bool, replicated) -> LatentSpace:
  """The newest autoencoder checkpoint of ``workdir``/autoencoder and its scale factor, checked
  against the score model's data (image size, channels, centering)."""
  field = "config.latent.autoencoder_workdir"
  out_dir = os.path.join(workdir, "autoencoder")
  spec = autoencoder.read_spec(out_dir)
  data = spec["data"]
  want = {"image_size": image_size, "num_channels": num_channels, "centered": centered}
  got = {k: data[k] for k in want}
  if got != want:
    raise ValueError(f"{field}={workdir!r}: its autoencoder was trained on images {got}, but "
                     f"config.data gives {want}; use the autoencoder's data settings.")
  ckpts = checkpointing.TrainCheckpoints(out_dir, read_only=True)
  try:
    state = ckpts.restore_latest(autoencoder.abstract_state(spec))
  finally:
    ckpts.close()
  if state is None:
    raise FileNotFoundError(f"{field}={workdir!r} has no autoencoder checkpoint in {out_dir}; run "
                            "--mode train_autoencoder there first.")
  step = int(state.step)
  if scale_factor <= 0:
    scale_factor = _stored_scale_factor(out_dir, step)
  return LatentSpace(spec=spec, params=jax.device_put(state.params["autoencoder"], replicated),
                     scale_factor=float(scale_factor), shape=autoencoder.latent_shape(spec),
                     workdir=workdir, step=step)


def _stored_scale_factor(out_dir: str, step: int) -> float:
  path = os.path.join(out_dir, autoencoder.SCALE_FILE)
  stored = json.load(open(path)) if os.path.isfile(path) else {}
  if stored.get("step") != step:
    found = f"is for step {stored['step']}" if stored else "is missing"
    raise ValueError(f"{path} {found}, but the newest autoencoder checkpoint is step {step}: run "
                     "--mode train_autoencoder on that workdir again (it stores the factor of its "
                     "final checkpoint) or set config.latent.scale_factor.")
  return float(stored["scale_factor"])

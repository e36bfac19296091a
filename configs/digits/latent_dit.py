"""A class-conditional latent DiT (Peebles & Xie 2023 on LDM latents, Rombach et al. 2022) on the
16x16 digits, with classifier-free guidance: the 8x8x2 latents of configs/digits/autoencoder.py.

  python main.py --config configs/digits/latent_dit.py --workdir runs/digits_latent_dit --mode train
  python main.py --config configs/digits/latent_dit.py --workdir runs/digits_latent_dit --mode eval \
      --config.sampling.guidance_scale=2

after training its autoencoder into runs/digits_ae (configs/digits/autoencoder.py; another
autoencoder run: --config.latent.autoencoder_workdir=DIR).

The VP SDE and DDPM++'s schedule of the main job; DiT with patch 2 on the 8x8 latents (16 tokens),
hidden 64, depth 4, 4 heads, 10 classes + the null class (label dropout 0.1). Latents are scaled by
the autoencoder's 1/std (its latent_scale.json). Samples are decoded before every grid and metric;
bits/dim are off: a latent model's likelihood is of the scaled latents, not of the digits.
Expected: the guidance-weight study of docs/dit_latent.md (FDD and class accuracy).
"""
import ml_collections

from configs.digits import dit


def get_config() -> ml_collections.ConfigDict:
  config = dit.get_config()
  config.latent.autoencoder_workdir = "runs/digits_ae"
  config.model.num_classes = 10
  config.training.class_dropout = 0.1
  config.sampling.guidance = "cfg"
  config.sampling.guidance_scale = 2.0
  config.eval.enable_bpd = False
  return config

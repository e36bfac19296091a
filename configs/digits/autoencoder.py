"""The KL autoencoder of latent diffusion (LDM's AutoencoderKL) on the 16x16 digits: 16x16x1 ->
8x8x2 latents (f = 2).

  python main.py --config configs/digits/autoencoder.py --workdir runs/digits_ae --mode train_autoencoder

Why 8x8x2 and not 4x4x4: scikit-learn's digits are 8x8 images upscaled to 16x16, so f = 2 is the
largest factor that needs no semantic compression (LDM's "perceptual compression" regime, Sec. 3.1;
their best f is 4-16 on 256-pixel images, whose detail is real); 4x4x4 keeps half as many values,
and a DiT on a 4x4 latent has 4 tokens at patch 2, 16 at patch 1. 8x8x2 keeps 128 of the 256
values and gives a latent DiT 16 tokens at patch 2, as many as the pixel DiT at patch 4.

Loss: L1 + kl_weight 1e-6 x KL (LDM's KL-f8 settings) with the learned log-variance; no LPIPS (VGG
features of 16x16 gray digits mean little, and its weights are not shipped: see docs/dit_latent.md)
and no discriminator (disc_start -1; set disc_start >= 0 and disc_layers 1 to add a 6x6-patch one).
Network: ch 32, ch_mult (1, 2), one block per level, attention only in the middle blocks, 8 groups.
Expected (one run on 2 CPU cores): 2000 steps in about 8 minutes; the reconstruction grid in
runs/digits_ae/autoencoder/recon/iter_2000.png; test PSNR and L1 in the log; the latent scale
factor in runs/digits_ae/autoencoder/latent_scale.json (figures in docs/dit_latent.md).
"""
import ml_collections

from configs.digits import ddpmpp_vp_small


def get_config() -> ml_collections.ConfigDict:
  config = ddpmpp_vp_small.get_shared_config()
  config.autoencoder.update(
      ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), z_channels=2, embed_dim=2,
      num_groups=8, rec_loss="l1", kl_weight=1e-6, disc_start=-1, disc_ndf=32, disc_layers=1,
      batch_size=32, n_iters=2000, lr=1e-3, log_freq=100, eval_freq=500, snapshot_freq=1000,
      snapshot_freq_for_preemption=500, num_recon=16, scale_num_images=1500)
  return config

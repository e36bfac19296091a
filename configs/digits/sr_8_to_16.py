"""The super-resolution stage of the digits cascade: DDPM++ from 8x8 to 16x16 (SR3 / cascaded
diffusion), conditioned on the 2x2-average-pooled digit, with CDM's conditioning augmentation.

  python main.py --config configs/digits/sr_8_to_16.py --workdir runs/digits_sr --mode train
  python main.py --config configs/digits/sr_8_to_16.py --workdir runs/digits_sr --mode eval

The main job's network, schedule and sampler; the low-resolution digit is upsampled (bicubic) and
concatenated to the input. Training noises it by the VP SDE's forward process at time s T with
s ~ U[0, 0.3]; sampling at s = 0.05 (super_resolution.sample_aug_level; a study over it in
docs/image_conditioning.md). Bits/dim are off: they would be conditional on the low-resolution
digit. Expected: evaluation samples upsample the held-out digits (runs/digits_sr/eval/ckpt_1/
samples.png) and their FDD is in runs/digits_sr/eval/report_2500.json (docs/image_conditioning.md).
"""
import ml_collections

from configs.digits import ddpmpp_vp_small


def get_config() -> ml_collections.ConfigDict:
  config = ddpmpp_vp_small.get_shared_config()
  config.super_resolution.factor = 2
  config.super_resolution.aug_max = 0.3
  config.super_resolution.sample_aug_level = 0.05
  config.eval.enable_bpd = False
  return config

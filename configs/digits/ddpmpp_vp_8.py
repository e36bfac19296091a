"""The main job's DDPM++ (configs/digits/ddpmpp_vp_small.py) on the digits at 8x8, their native
resolution: the base stage of the 8x8 -> 16x16 cascade (configs/digits/cascade_8_to_16.py).

  python main.py --config configs/digits/ddpmpp_vp_8.py --workdir runs/digits_8 --mode train

Two resolution levels (8, 4) with attention at 4. Expected: 2500 steps in a few minutes on 2 CPU
cores and 8x8 digit samples in runs/digits_8/samples/iter_2500.png; bits/dim and FDD (on the
samples upscaled to 16x16) in runs/digits_8/eval/report_2500.json.
"""
import ml_collections

from configs.digits import ddpmpp_vp_small


def get_config() -> ml_collections.ConfigDict:
  config = ddpmpp_vp_small.get_shared_config()
  config.data.image_size = 8
  config.model.ch_mult = (1, 2)
  config.model.attn_resolutions = (4,)
  return config

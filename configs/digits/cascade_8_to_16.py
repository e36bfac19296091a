"""The digits cascade: the 8x8 base (configs/digits/ddpmpp_vp_8.py, runs/digits_8) upsampled to
16x16 by the super-resolution stage (configs/digits/sr_8_to_16.py, runs/digits_sr).

  python main.py --config configs/digits/cascade_8_to_16.py --workdir runs/digits_cascade --mode sample

after training both stages. Writes runs/digits_cascade/cascade/stage_0.png (8x8 base samples),
stage_1.png (their 16x16 upsampling) and report.json with the FDD of the final samples.
Expected: the comparison with the direct 16x16 model at equal total training steps in
docs/image_conditioning.md.
"""
import ml_collections

from configs.digits import ddpmpp_vp_small


def get_config() -> ml_collections.ConfigDict:
  config = ddpmpp_vp_small.get_shared_config()
  c = config.cascade
  c.base_config = "configs/digits/ddpmpp_vp_8.py"
  c.base_workdir = "runs/digits_8"
  c.stage_configs = ("configs/digits/sr_8_to_16.py",)
  c.stage_workdirs = ("runs/digits_sr",)
  config.eval.num_samples = 256
  config.eval.enable_bpd = False
  return config

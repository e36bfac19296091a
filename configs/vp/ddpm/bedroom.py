"""DDPM (Ho et al., 2020) on LSUN bedroom 256x256: 1000 discrete VP steps, ancestral sampling.

    python main.py --config configs/vp/ddpm/bedroom.py --workdir runs/vp_ddpm_bedroom --mode train

Needs tfds `lsun/bedroom` prepared as array_record (docs/data.md).
Expected: no published number for this configuration.
"""
import ml_collections

from configs import architectures, default_lsun_configs


def get_config() -> ml_collections.ConfigDict:
  config = default_lsun_configs.get_default_configs()
  config.training.sde = "vpsde"
  config.training.continuous = False
  config.training.reduce_mean = True

  config.sampling.method = "pc"
  config.sampling.predictor = "ancestral_sampling"
  config.sampling.corrector = "none"

  config.data.category = "bedroom"
  config.data.centered = True

  config.model.num_scales = 1000
  config.model.update(architectures.ddpm(
      ch_mult=(1, 1, 2, 2, 4, 4), scale_by_sigma=False, ema_rate=0.9999))

  config.optim.lr = 2e-5
  return config

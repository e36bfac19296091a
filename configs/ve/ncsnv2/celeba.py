"""NCSNv2 (Song & Ermon, 2020) on CelebA 64x64: 500 noise levels from 90 to 0.01, annealed Langevin.

    python main.py --config configs/ve/ncsnv2/celeba.py --workdir runs/ve_ncsnv2_celeba --mode train

Expected: no published number for this configuration.
"""
import ml_collections

from configs import architectures, default_celeba_configs


def get_config() -> ml_collections.ConfigDict:
  config = default_celeba_configs.get_default_configs()
  config.training.sde = "vesde"
  config.training.continuous = False

  config.sampling.method = "pc"
  config.sampling.predictor = "none"
  config.sampling.corrector = "ald"
  config.sampling.n_steps_each = 5
  config.sampling.snr = 0.128

  config.model.num_scales = 500
  config.model.update(architectures.refinenet("ncsnv2_64", scale_by_sigma=True, ema_rate=0.999))

  config.optim.update(architectures.refinenet_optim(lr=1e-4))
  return config

"""NCSN (Song & Ermon, 2019) on CelebA 64x64: 10 noise levels from 1 to 0.01, annealed Langevin.

The baseline of the NCSNv2 ablations on CelebA; same settings as configs/ve/ncsn/cifar10.py.

    python main.py --config configs/ve/ncsn/celeba.py --workdir runs/ve_ncsn_celeba --mode train

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
  config.sampling.n_steps_each = 100
  config.sampling.snr = 0.316

  config.model.sigma_max = 1.
  config.model.num_scales = 10
  config.model.update(architectures.refinenet("ncsn", scale_by_sigma=False, ema_rate=0.))

  config.optim.update(architectures.refinenet_optim(lr=1e-3))
  return config

"""NCSN (Song & Ermon, 2019) on CIFAR-10: 10 noise levels from 1 to 0.01, annealed Langevin.

The baseline of the NCSNv2 ablations: no EMA, and the network output is not divided by sigma.
Sampling runs 100 Langevin steps per noise level with step size 2 (snr * sigma)^2.

    python main.py --config configs/ve/ncsn/cifar10.py --workdir runs/ve_ncsn_cifar10 --mode train

Expected: no published number for this configuration.
"""
import ml_collections

from configs import architectures, default_cifar10_configs


def get_config() -> ml_collections.ConfigDict:
  config = default_cifar10_configs.get_default_configs()
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

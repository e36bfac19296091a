r"""NCSNv2 (Song & Ermon, 2020) on CIFAR-10: 232 noise levels from 50 to 0.01, annealed Langevin.

All five NCSNv2 techniques, including the output divided by sigma (technique 3).

    python main.py --config configs/ve/ncsnv2/cifar10.py \
        --workdir runs/ve_ncsnv2_cifar10 --mode train

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
  config.sampling.n_steps_each = 5
  config.sampling.snr = 0.176

  config.model.num_scales = 232
  config.model.update(architectures.refinenet("ncsnv2_64", scale_by_sigma=True, ema_rate=0.999))

  config.optim.update(architectures.refinenet_optim(lr=1e-4))
  return config

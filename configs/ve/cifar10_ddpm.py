"""The original DDPM U-Net trained with SMLD (the VE SDE on discrete noise levels) on CIFAR-10.

    python main.py --config configs/ve/cifar10_ddpm.py --workdir runs/ve_cifar10_ddpm --mode train

Expected: no published number for this configuration.
"""
import ml_collections

from configs import architectures, default_cifar10_configs


def get_config() -> ml_collections.ConfigDict:
  config = default_cifar10_configs.get_default_configs()
  config.training.sde = "vesde"
  config.training.continuous = False

  config.sampling.method = "pc"
  config.sampling.predictor = "reverse_diffusion"
  config.sampling.corrector = "langevin"

  config.model.update(architectures.ddpm(ch_mult=(1, 2, 2, 2), scale_by_sigma=True, ema_rate=0.999))
  return config

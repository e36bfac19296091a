"""DDPM (Ho et al., 2020) on CIFAR-10: the VP SDE on 1000 discrete steps, ancestral sampling.

    python main.py --config configs/vp/ddpm/cifar10.py --workdir runs/vp_ddpm_cifar10 --mode train

Expected (reference README, checkpoint `vp/cifar10_ddpm`): FID 3.24; FID 3.37 with the
probability-flow ODE; 3.28 bits/dim on dequantized test images.
"""
import ml_collections

from configs import architectures, default_cifar10_configs


def get_config() -> ml_collections.ConfigDict:
  config = default_cifar10_configs.get_default_configs()
  config.training.sde = "vpsde"
  config.training.continuous = False
  config.training.reduce_mean = True

  config.sampling.method = "pc"
  config.sampling.predictor = "ancestral_sampling"
  config.sampling.corrector = "none"

  config.data.centered = True

  config.model.update(architectures.ddpm(
      ch_mult=(1, 2, 2, 2), scale_by_sigma=False, ema_rate=0.9999))
  return config

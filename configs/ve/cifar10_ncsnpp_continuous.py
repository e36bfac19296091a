r"""NCSN++ on CIFAR-10 with the VE SDE, continuous time (Song et al., ICLR 2021).

    python main.py --config configs/ve/cifar10_ncsnpp_continuous.py \
        --workdir runs/ve_cifar10_ncsnpp_continuous --mode train

Expected: FID 2.38, Inception score 9.83 (50k samples).
"""
import ml_collections

from configs import architectures, default_cifar10_configs


def get_config() -> ml_collections.ConfigDict:
  config = default_cifar10_configs.get_default_configs()
  config.training.sde = "vesde"
  config.training.continuous = True

  config.sampling.method = "pc"
  config.sampling.predictor = "reverse_diffusion"
  config.sampling.corrector = "langevin"

  config.model.update(architectures.ncsnpp_cifar10(
      scale_by_sigma=True, ema_rate=0.999, embedding_type="fourier"))
  return config

"""NCSN++ on CelebA 64x64 with SMLD (the VE SDE on discrete noise levels).

    python main.py --config configs/ve/celeba_ncsnpp.py --workdir runs/ve_celeba_ncsnpp --mode train

Expected: no published number for this configuration (CelebA checkpoints were not released).
"""
import ml_collections

from configs import architectures, default_celeba_configs


def get_config() -> ml_collections.ConfigDict:
  config = default_celeba_configs.get_default_configs()
  config.training.sde = "vesde"
  config.training.continuous = False

  config.sampling.method = "pc"
  config.sampling.predictor = "reverse_diffusion"
  config.sampling.corrector = "langevin"

  config.model.update(architectures.ncsnpp_cifar10(
      scale_by_sigma=True, ema_rate=0.999, embedding_type="positional"))
  return config

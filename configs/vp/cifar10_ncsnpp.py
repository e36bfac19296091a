r"""NCSN++ on CIFAR-10 trained as a DDPM (the VP SDE on its 1000 discrete steps).

Sampled with the reverse-diffusion predictor and no corrector.

    python main.py --config configs/vp/cifar10_ncsnpp.py \
        --workdir runs/vp_cifar10_ncsnpp --mode train

Expected: no published number for this configuration.
"""
import ml_collections

from configs.vp import cifar10_ncsnpp_continuous


def get_config() -> ml_collections.ConfigDict:
  config = cifar10_ncsnpp_continuous.get_config()
  config.training.continuous = False
  config.sampling.predictor = "reverse_diffusion"
  return config

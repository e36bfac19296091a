r"""DDPM++ on CIFAR-10 trained as a DDPM: the VP SDE on its 1000 discrete steps, ancestral sampling.

    python main.py --config configs/vp/cifar10_ddpmpp.py \
        --workdir runs/vp_cifar10_ddpmpp --mode train

Expected (reference README): FID 2.78, Inception score 9.64.
"""
import ml_collections

from configs.vp import cifar10_ddpmpp_continuous


def get_config() -> ml_collections.ConfigDict:
  config = cifar10_ddpmpp_continuous.get_config()
  config.training.continuous = False
  config.sampling.predictor = "ancestral_sampling"
  return config

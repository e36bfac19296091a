"""Defaults shared by the CelebA 64x64 experiments, as in the reference implementation.

They are the CIFAR-10 defaults with CelebA's data, noise scale, corrector SNR and evaluation.
"""
import ml_collections

from configs import default_cifar10_configs


def get_default_configs() -> ml_collections.ConfigDict:
  config = default_cifar10_configs.get_default_configs()
  config.sampling.snr = 0.17

  config.eval.begin_ckpt = 1
  config.eval.enable_sampling = True

  config.data.dataset = "CELEBA"
  config.data.image_size = 64

  config.model.sigma_max = 90.
  return config

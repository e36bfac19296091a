r"""NCSN++ on CIFAR-10 with SMLD: the VE SDE trained on its 1000 discrete noise levels.

    python main.py --config configs/ve/cifar10_ncsnpp.py \
        --workdir runs/ve_cifar10_ncsnpp --mode train

Expected: FID 2.45, Inception score 9.73 (the reference README's checkpoint table).
"""
import ml_collections

from configs.ve import cifar10_ncsnpp_continuous


def get_config() -> ml_collections.ConfigDict:
  config = cifar10_ncsnpp_continuous.get_config()
  config.training.continuous = False
  config.model.embedding_type = "positional"  # the network sees the noise-level index
  return config

r"""NCSN++ cont. deep on CIFAR-10 with the VE SDE: 8 residual blocks per resolution, 950k steps.

    python main.py --config configs/ve/cifar10_ncsnpp_deep_continuous.py \
        --workdir runs/ve_cifar10_ncsnpp_deep_continuous --mode train

Expected: FID 2.20, Inception score 9.89 (50k samples), the best published result
of the paper for unconditional CIFAR-10.
"""
import ml_collections

from configs.ve import cifar10_ncsnpp_continuous


def get_config() -> ml_collections.ConfigDict:
  config = cifar10_ncsnpp_continuous.get_config()
  config.training.n_iters = 950001
  config.model.num_res_blocks = 8
  return config

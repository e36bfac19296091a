r"""NCSN++ cont. deep on CIFAR-10 with the VP SDE: 8 residual blocks per resolution, 950k steps.

    python main.py --config configs/vp/cifar10_ncsnpp_deep_continuous.py \
        --workdir runs/vp_cifar10_ncsnpp_deep_continuous --mode train

Expected: no published number for this configuration.
"""
import ml_collections

from configs.vp import cifar10_ncsnpp_continuous


def get_config() -> ml_collections.ConfigDict:
  config = cifar10_ncsnpp_continuous.get_config()
  config.training.n_iters = 950001
  config.model.num_res_blocks = 8
  return config

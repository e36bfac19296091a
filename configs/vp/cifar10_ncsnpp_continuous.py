r"""NCSN++ on CIFAR-10 with the VP SDE, continuous time.

    python main.py --config configs/vp/cifar10_ncsnpp_continuous.py \
        --workdir runs/vp_cifar10_ncsnpp_continuous --mode train

Expected: no published number for this configuration.
"""
import ml_collections

from configs import architectures, default_cifar10_configs


def get_config() -> ml_collections.ConfigDict:
  config = default_cifar10_configs.get_default_configs()
  config.training.sde = "vpsde"
  config.training.continuous = True
  config.training.reduce_mean = True

  config.sampling.method = "pc"
  config.sampling.predictor = "euler_maruyama"
  config.sampling.corrector = "none"

  config.data.centered = True

  config.model.update(architectures.ncsnpp_cifar10(
      scale_by_sigma=False, ema_rate=0.9999, embedding_type="positional"))
  return config

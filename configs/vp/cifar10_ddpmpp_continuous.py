r"""DDPM++ on CIFAR-10 with the VP SDE, continuous time (Song et al., ICLR 2021).

    python main.py --config configs/vp/cifar10_ddpmpp_continuous.py \
        --workdir runs/vp_cifar10_ddpmpp_continuous --mode train

Expected (reference README): FID 2.55, Inception score 9.58 (50k samples); FID 3.93 with the
probability-flow ODE; 3.16 bits/dim on dequantized test images.
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

  config.model.update(architectures.ddpmpp_cifar10(
      scale_by_sigma=False, ema_rate=0.9999, embedding_type="positional"))
  return config

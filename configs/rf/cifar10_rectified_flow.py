r"""1-rectified flow on CIFAR-10 (Liu et al. 2022): DDPM++ (continuous, positional labels) trained
with the flow-matching loss on `RectifiedFlow`, sampled with an adaptive RK45 (Dormand–Prince)
solve of dx/dt = v at tolerance 1e-5, as the reference's `rk45` sampler.

    python main.py --config configs/rf/cifar10_rectified_flow.py \
        --workdir runs/rf_cifar10 --mode train

Expected (published): FID 2.58 with RK45 (1-RF). Deviations: docs/configs.md.
"""
from configs.vp import cifar10_ddpmpp_continuous


def get_config():
  config = cifar10_ddpmpp_continuous.get_config()
  config.training.sde = "rectified_flow"
  config.training.loss = "flow_matching"
  config.model.ema_rate = 0.999999
  config.model.dropout = 0.15
  config.sampling.method = "ode"
  config.sampling.solver = "dopri5"
  config.sampling.rtol = 1e-5
  config.sampling.atol = 1e-5
  config.sampling.noise_removal = False
  return config

"""1-rectified flow (Liu et al. 2022) on the digits: the main job's DDPM++ trained with the
flow-matching loss ‖v_θ(x_t, t) − (z − x_0)‖² on the straight path x_t = (1 − t) x_0 + t z
(`RectifiedFlow`, t = 0 the data), sampled by Euler steps of dx/dt = v.

  python main.py --config configs/digits/rectified_flow.py --workdir runs/digits_rf --mode train
  python main.py --config configs/digits/rectified_flow.py --workdir runs/digits_rf --mode reflow_pairs

The second command writes the (z, x_0) couplings that configs/digits/reflow.py trains the
2-rectified flow on. Expected: the FDD against NFE in docs/few_step.md.
"""
from configs.digits import ddpmpp_vp_small


def get_config():
  config = ddpmpp_vp_small.get_shared_config()
  config.training.sde = "rectified_flow"
  config.training.loss = "flow_matching"
  config.sampling.method = "flow"
  config.sampling.solver = "euler"
  config.sampling.num_steps = 8
  config.sampling.noise_removal = False  # N Euler steps are N evaluations
  config.reflow.num_pairs = 4096
  return config

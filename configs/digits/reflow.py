"""2-rectified flow (Liu et al. 2022, reflow) on the digits: the flow-matching loss on the (z, x_0)
couplings of the 1-rectified flow (configs/digits/rectified_flow.py), starting from its parameters.

  python main.py --config configs/digits/reflow.py --workdir runs/digits_2rf --mode train

after writing the couplings (python main.py --config configs/digits/rectified_flow.py --workdir
runs/digits_rf --mode reflow_pairs). Expected: the FDD of 1 and 2 Euler steps in
docs/few_step.md.

`--config.training.time_sampling=max` instead distils the flow to one Euler step (t = T only).
The couplings replace the digits, so the eval reports no bits/dim (the pairs are not data);
docs/few_step.md has the Fréchet Digits Distance against NFE.
"""
from configs.digits import rectified_flow


def get_config():
  config = rectified_flow.get_config()
  config.data.dataset = "pairs"
  config.data.path = "runs/digits_rf/reflow_pairs"
  config.training.init_from = "runs/digits_rf"
  config.training.n_iters = 1500
  config.training.snapshot_freq = 1500
  config.eval.enable_bpd = False
  config.eval.num_samples = 256
  config.sampling.num_steps = 1
  return config

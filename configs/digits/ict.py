"""Improved consistency training (Song & Dhariwal 2023) from scratch on the digits: the doubling
curriculum N(k) = min(10 · 2^⌊k/K'⌋, 1280) + 1, lognormal noise levels (P_mean −1.1, P_std 2.0),
λ(σ_i) = 1 / (σ_{i+1} − σ_i), pseudo-Huber metric with c = 0.00054 √d, and no target EMA.

  python main.py --config configs/digits/ict.py --workdir runs/digits_ict --mode train

The main job's small DDPM++ as F_θ with the consistency preconditioning; samples with the
consistency sampler (1 step, or `--config.sampling.num_steps=2`). Expected: the FDD of 1 and 2
steps in docs/few_step.md.
"""
from configs.digits import ddpmpp_vp_small


def get_config():
  config = ddpmpp_vp_small.get_shared_config()
  config.training.loss = "improved_consistency_training"
  config.training.n_iters = 3000
  config.training.snapshot_freq = 3000
  config.sampling.method = "consistency"
  config.sampling.num_steps = 1
  config.eval.enable_bpd = False
  config.optim.lr = 1e-3
  return config

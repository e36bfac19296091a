"""Consistency distillation (Song et al. 2023, Algorithm 2) of the README's main job on the digits.

The teacher is the newest checkpoint of configs/digits/ddpmpp_vp_small.py in runs/digits (VP SDE,
ε-prediction), read as a denoiser D(x_σ, σ) through σ(t) = std / m. Each step: one Heun step of
the teacher's probability-flow ODE between adjacent levels of the N = 18 Karras grid, the student
f_θ = c_skip x + c_out F_θ (the same small DDPM++, consistency preconditioning) against its target
EMA (μ = 0.95), squared L2 metric (LPIPS needs downloaded VGG weights).

  python main.py --config configs/digits/cd.py --workdir runs/digits_cd --mode train

after training the teacher (python main.py --config configs/digits/ddpmpp_vp_small.py --workdir
runs/digits --mode train). Expected: the FDD of 1, 2 and 4 steps in docs/few_step.md.

Samples with the consistency sampler (one step; `--config.sampling.num_steps=2` for two).
The student starts from scratch: the teacher's ε-network sees other inputs and labels (999 t)
than a consistency function (c_in x, ln σ / 4), so its weights are no warm start.
"""
from configs.digits import ddpmpp_vp_small


def get_config():
  config = ddpmpp_vp_small.get_shared_config()
  config.training.loss = "consistency_distillation"
  config.training.n_iters = 2500
  c = config.consistency
  c.teacher_config = "configs/digits/ddpmpp_vp_small.py"
  c.teacher_workdir = "runs/digits"
  c.num_levels = 18
  c.metric = "l2"
  c.solver = "heun"
  c.target_decay = 0.95
  config.sampling.method = "consistency"
  config.sampling.num_steps = 1
  config.eval.enable_bpd = False
  config.optim.lr = 1e-3
  return config

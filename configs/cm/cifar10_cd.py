r"""Consistency distillation on CIFAR-10 (Song et al. 2023), at the published settings where this
codebase has them: N = 18 Karras levels (ρ = 7, σ ∈ [0.002, 80]), Heun teacher steps, target EMA
μ = 0.95, batch 512, lr 4e-4, 800k steps, evaluation EMA 0.9999, NCSN++ student (positional
labels c_noise = ln σ / 4).

    python main.py --config configs/cm/cifar10_cd.py --workdir runs/cm_cifar10_cd --mode train

after training its teacher (consistency.teacher_workdir):

    python main.py --config configs/vp/cifar10_ddpmpp_continuous.py --workdir runs/vp_cifar10 --mode train

Expected (published): FID 3.55 / 2.93 at 1 / 2 steps with LPIPS. Deviations (squared L2 for LPIPS,
Adam instead of RAdam, a DDPM++ VP teacher instead of EDM's): docs/configs.md.
"""
from configs import architectures, default_cifar10_configs


def get_config():
  config = default_cifar10_configs.get_default_configs()
  config.training.sde = "vpsde"
  config.training.continuous = True
  config.training.reduce_mean = True
  config.training.loss = "consistency_distillation"
  config.training.batch_size = 512
  config.training.n_iters = 800000
  config.data.centered = True
  config.model.update(architectures.ncsnpp_cifar10(
      scale_by_sigma=False, ema_rate=0.9999, embedding_type="positional"))
  config.model.dropout = 0.0
  c = config.consistency
  c.teacher_config = "configs/vp/cifar10_ddpmpp_continuous.py"
  c.teacher_workdir = "runs/vp_cifar10"
  c.num_levels = 18
  c.solver = "heun"
  c.metric = "l2"
  c.target_decay = 0.95
  config.optim.lr = 4e-4
  config.optim.warmup = 0
  config.sampling.method = "consistency"
  config.sampling.predictor = "none"  # the PC fields stay for --config.sampling.method=pc
  config.sampling.corrector = "none"
  config.sampling.num_steps = 1
  config.eval.enable_bpd = False
  return config

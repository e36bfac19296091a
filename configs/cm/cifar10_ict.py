r"""Improved consistency training on CIFAR-10 (Song & Dhariwal 2023): the doubling curriculum
s0 = 10 → s1 = 1280, lognormal levels (−1.1, 2.0), λ = 1/(σ_{i+1} − σ_i), pseudo-Huber
c = 0.00054 √d, no target EMA; NCSN++ with dropout 0.3, batch 1024, Adam lr 1e-4, 400k steps,
evaluation EMA 0.99993.

    python main.py --config configs/cm/cifar10_ict.py --workdir runs/cm_cifar10_ict --mode train

Expected (published): FID 2.83 / 2.46 at 1 / 2 steps. Deviations: docs/configs.md.
"""
from configs import architectures, default_cifar10_configs


def get_config():
  config = default_cifar10_configs.get_default_configs()
  config.training.sde = "vpsde"
  config.training.continuous = True
  config.training.reduce_mean = True
  config.training.loss = "improved_consistency_training"
  config.training.batch_size = 1024
  config.training.n_iters = 400000
  config.data.centered = True
  config.model.update(architectures.ncsnpp_cifar10(
      scale_by_sigma=False, ema_rate=0.99993, embedding_type="positional"))
  config.model.dropout = 0.3
  config.optim.lr = 1e-4
  config.optim.warmup = 0
  config.sampling.method = "consistency"
  config.sampling.predictor = "none"  # the PC fields stay for --config.sampling.method=pc
  config.sampling.corrector = "none"
  config.sampling.num_steps = 1
  config.eval.enable_bpd = False
  return config

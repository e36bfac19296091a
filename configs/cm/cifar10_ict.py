r"""Improved consistency training on CIFAR-10 (Song & Dhariwal 2023): the doubling curriculum
s0 = 10 → s1 = 1280, lognormal levels (−1.1, 2.0), λ = 1/(σ_{i+1} − σ_i), pseudo-Huber
c = 0.00054 √d, no target EMA; NCSN++ with dropout 0.3, batch 1024, Adam lr 1e-4, 400k steps,
evaluation EMA 0.99993.

    python main.py --config configs/cm/cifar10_ict.py --workdir runs/cm_cifar10_ict --mode train

Expected (published): FID 2.83 / 2.46 at 1 / 2 steps. Deviations: docs/configs.md.
"""
from configs.cm import cifar10_cd


def get_config():
  """cifar10_cd's network, data and sampler with the iCT objective and schedule."""
  config = cifar10_cd.get_config()
  config.training.loss = "improved_consistency_training"
  config.training.batch_size = 1024
  config.training.n_iters = 400000
  config.model.ema_rate = 0.99993
  config.model.dropout = 0.3
  config.optim.lr = 1e-4
  c = config.consistency  # iCT has no teacher and no target EMA; its options keep their defaults
  for field in ("teacher_config", "teacher_workdir", "num_levels", "solver", "metric",
                "target_decay"):
    c[field] = None
  return config

"""DDPM++ (continuous VP SDE) on the built-in handwritten digits at 16x16: the README's main job.

  python main.py --config configs/digits/ddpmpp_vp_small.py --workdir runs/digits --mode train --cpu_devices 2
  python main.py --config configs/digits/ddpmpp_vp_small.py --workdir runs/digits --mode eval --cpu_devices 2

Runs offline (the digits ship with scikit-learn). Expected on 2 idle CPU cores: 2500 steps in 5-8
minutes, the eval in 4-6 (the CPU as two devices; our 2-core machines vary 1.5x in speed over a
day: docs/performance.md), a grid of recognisable digits in
runs/digits/samples/iter_2500.png,
and the test loss, dequantized bits/dim and Frechet Digits Distance in
runs/digits/eval/report_2500.json (figures in the README).

The CIFAR-10 defaults with a small DDPM++ (16 channels, 3 resolutions, one block each) and short
schedules for a CPU.
"""
import ml_collections

from configs import architectures, default_cifar10_configs


def get_config() -> ml_collections.ConfigDict:
  """The shared base with the main job's sampler and bits/dim step control, chosen to keep the
  README's train + eval under 10 minutes on 2 cores (docs/performance.md, "The main job"):
  EDM's stochastic Heun sampler (Karras et al. 2022, Alg. 2), 50 steps (99 evaluations) with
  S_churn = 40, in place of 500 Euler-Maruyama steps (FDD within the spread of 256 samples), and
  one step size for each batch of the likelihood solve, as the reference does."""
  config = get_shared_config()
  config.sampling.update(method="edm", num_steps=50, s_churn=40.0)
  config.eval.bpd_step_control = "batch"
  return config


def get_shared_config() -> ml_collections.ConfigDict:
  """The main job's data, model, schedule and optimiser with the reference's PC sampler (Euler-
  Maruyama, N = 500): the base of the other digits configs, whose documented figures used it."""
  config = default_cifar10_configs.get_default_configs()

  training = config.training
  training.sde = "vpsde"
  training.continuous = True
  training.reduce_mean = True
  training.batch_size = 32
  training.n_iters = 2500
  training.n_jitted_steps = 1
  training.log_freq = 100
  training.eval_freq = 500
  training.snapshot_freq = 2500
  training.snapshot_freq_for_preemption = 500
  training.snapshot_num_samples = 64

  config.sampling.method = "pc"
  config.sampling.predictor = "euler_maruyama"
  config.sampling.corrector = "none"

  evaluate = config.eval
  evaluate.begin_ckpt = 1
  evaluate.end_ckpt = 1
  evaluate.batch_size = 128
  evaluate.enable_sampling = True
  evaluate.num_samples = 256
  evaluate.enable_bpd = True
  evaluate.bpd_num_repeats = 1
  evaluate.checkpoint_timeout_s = 0.0

  data = config.data
  data.dataset = "digits"
  data.image_size = 16
  data.num_channels = 1
  data.random_flip = False
  data.centered = True

  config.model.update(architectures.ddpmpp_cifar10(
      scale_by_sigma=False, ema_rate=0.999, embedding_type="positional"))
  config.model.update(nf=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(4,),
                      dropout=0.0, num_scales=500)

  # A small noise-conditional classifier of the digits (WRN-10-2) for --mode train_classifier.
  classifier = config.classifier
  classifier.depth = 10
  classifier.widen_factor = 2
  classifier.n_iters = 2000
  classifier.batch_size = 64
  classifier.lr = 1e-3
  classifier.warmup = 100
  classifier.eval_freq = 500
  classifier.snapshot_freq = 1000

  config.optim.lr = 2e-3
  config.optim.warmup = 100
  return config

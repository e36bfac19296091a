"""DDPM++ (continuous VP SDE) on the built-in handwritten digits at 16x16: the README's main job.

  python main.py --config configs/digits/ddpmpp_vp_small.py --workdir runs/digits --mode train
  python main.py --config configs/digits/ddpmpp_vp_small.py --workdir runs/digits --mode eval

Runs offline (the digits ship with scikit-learn). Expected: 2500 steps in about 10 minutes on
2 CPU cores (0.17-0.3 s/step), a grid of recognisable digits in runs/digits/samples/iter_2500.png,
and the test loss, dequantized bits/dim and Frechet Digits Distance in
runs/digits/eval/report_2500.json (figures in the README).
"""
import ml_collections
from ml_collections.config_dict import placeholder


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 42

  config.training = training = ml_collections.ConfigDict()
  training.sde = "vpsde"
  training.continuous = True
  training.reduce_mean = True
  training.likelihood_weighting = False
  training.batch_size = 32
  training.n_iters = 2500
  training.n_jitted_steps = 1
  training.log_freq = 100
  training.eval_freq = 500
  training.snapshot_freq = 2500
  training.snapshot_freq_for_preemption = 500
  training.snapshot_sampling = True
  training.snapshot_num_samples = 64

  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.method = "pc"
  sampling.predictor = "euler_maruyama"
  sampling.corrector = "none"
  sampling.n_steps_each = 1
  sampling.noise_removal = True
  sampling.probability_flow = False
  sampling.snr = 0.16

  config.eval = evaluate = ml_collections.ConfigDict()
  evaluate.begin_ckpt = 1
  evaluate.end_ckpt = 1
  evaluate.batch_size = 128
  evaluate.enable_sampling = True
  evaluate.num_samples = 256
  evaluate.enable_loss = True
  evaluate.enable_bpd = True
  evaluate.bpd_dataset = "test"
  evaluate.bpd_num_repeats = 1
  evaluate.checkpoint_timeout_s = 0.0
  # Inception metrics (FID, KID, IS), computed when Inception weights are given (docs/metrics.md).
  evaluate.fid_stats_split = "train"
  evaluate.fid_stats_num_images = 0  # 0 takes the whole split
  evaluate.fid_stats_path = placeholder(str)  # None: <workdir>/fid_stats/digits_train_16.npz
  evaluate.inception_batch_size = 50
  evaluate.enable_precision_recall = False

  config.data = data = ml_collections.ConfigDict()
  data.dataset = "digits"
  data.image_size = 16
  data.num_channels = 1
  data.random_flip = False
  data.centered = True
  data.uniform_dequantization = False
  data.category = placeholder(str)
  data.path = placeholder(str)
  data.tfds_name = placeholder(str)
  data.data_dir = placeholder(str)

  config.model = model = ml_collections.ConfigDict()
  model.name = "ncsnpp"
  model.sigma_min = 0.01
  model.sigma_max = 50.0
  model.num_scales = 500
  model.beta_min = 0.1
  model.beta_max = 20.0
  model.dropout = 0.0
  model.ema_rate = 0.999
  model.scale_by_sigma = False
  model.normalization = "GroupNorm"
  model.nonlinearity = "swish"
  model.nf = 16
  model.ch_mult = (1, 2, 2)
  model.num_res_blocks = 1
  model.attn_resolutions = (4,)
  model.resamp_with_conv = True
  model.conditional = True
  model.fir = False
  model.fir_kernel = (1, 3, 3, 1)
  model.skip_rescale = True
  model.resblock_type = "biggan"
  model.progressive = "none"
  model.progressive_input = "none"
  model.progressive_combine = "sum"
  model.attention_type = "ddpm"
  model.init_scale = 0.0
  model.embedding_type = "positional"
  model.fourier_scale = 16.0
  model.conv_size = 3

  config.optim = optim = ml_collections.ConfigDict()
  optim.optimizer = "Adam"
  optim.lr = 2e-3
  optim.beta1 = 0.9
  optim.eps = 1e-8
  optim.weight_decay = 0.0
  optim.warmup = 100
  optim.grad_clip = 1.0
  return config

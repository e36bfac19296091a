"""Defaults shared by the CIFAR-10 experiments (32x32), as in the reference implementation.

Not runnable by itself: an experiment file adds `training.sde`, `sampling.{method, predictor,
corrector}` and the network (`model.name` and its hyper-parameters).
"""
import ml_collections
from ml_collections.config_dict import placeholder


def get_default_configs() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  config.training = training = ml_collections.ConfigDict()
  training.batch_size = 128
  training.n_iters = 1300001
  training.snapshot_freq = 50000
  training.log_freq = 50
  training.eval_freq = 100
  training.snapshot_freq_for_preemption = 10000  # extra checkpoint, overwritten, for preemption
  training.snapshot_sampling = True  # save a sample grid with every snapshot
  training.likelihood_weighting = False
  training.continuous = True
  training.n_jitted_steps = 5  # train steps per device call
  training.reduce_mean = False
  training.class_dropout = 0.1  # label dropout to the null class when model.num_classes > 0 (CFG)
  # Objective (losses.OBJECTIVES: 'dsm', 'smld', 'ddpm', 'edm', 'flow_matching' and the consistency
  # objectives below); None: 'dsm' when continuous, else
  # the SDE's discrete loss ('smld' for VE, 'ddpm' for VP), as the reference.
  training.loss = placeholder(str)
  # EDM loss and preconditioning (Karras et al. 2022): σ_data and ln σ ~ N(p_mean, p_std^2).
  training.sigma_data = 0.5
  training.p_mean = -1.2
  training.p_std = 1.2
  # Flow matching (loss 'flow_matching'): t ~ 'uniform' on [eps, T], 'logit_normal' (logit_mean,
  # logit_std; SD3: 0, 1) or 'max' (t = T: one-step distillation on reflow pairs). None: uniform.
  training.time_sampling = placeholder(str)
  training.logit_mean = placeholder(float)
  training.logit_std = placeholder(float)
  # A workdir whose newest EMA parameters start a fresh run (CD student = teacher, k-RF = (k-1)-RF).
  training.init_from = placeholder(str)

  # Consistency models (loss 'consistency_distillation' | 'consistency_training' |
  # 'improved_consistency_training'; Song et al. 2023, Song & Dhariwal 2023). None keeps the
  # objective's published default (docs/few_step.md); σ_data is training.sigma_data.
  config.consistency = consistency = ml_collections.ConfigDict()
  consistency.sigma_min = 0.002
  consistency.sigma_max = 80.0
  consistency.rho = 7.0
  consistency.num_levels = placeholder(int)  # CD: N = 18
  consistency.s0 = placeholder(int)  # CT 2, iCT 10: initial N
  consistency.s1 = placeholder(int)  # CT 150, iCT 1280: final N
  consistency.mu0 = placeholder(float)  # CT: 0.9, the target EMA at N = s0
  consistency.p_mean = placeholder(float)  # iCT: -1.1, lognormal noise levels
  consistency.p_std = placeholder(float)  # iCT: 2.0
  consistency.metric = placeholder(str)  # CD / CT: 'l2' | 'pseudo_huber' (iCT: pseudo-Huber)
  consistency.huber_c = placeholder(float)  # pseudo-Huber c; None: 0.00054 sqrt(d)
  consistency.solver = placeholder(str)  # CD teacher step: 'heun' | 'euler'
  consistency.target_decay = placeholder(float)  # CD: the target EMA μ (0.95)
  consistency.teacher_config = placeholder(str)  # CD: the teacher's config file
  consistency.teacher_workdir = placeholder(str)  # CD: the teacher's workdir (newest checkpoint)

  # Reflow (--mode reflow_pairs): how many (noise, data) pairs to write, and the adaptive solve of
  # the probability-flow ODE from noise to data (samplers.ode.decode; the reference's RK45).
  config.reflow = reflow = ml_collections.ConfigDict()
  reflow.num_pairs = 50000
  reflow.solver = "dopri5"
  reflow.rtol = 1e-5
  reflow.atol = 1e-5

  # KL autoencoder of latent diffusion (--mode train_autoencoder, into <workdir>/autoencoder;
  # models/autoencoder.py, Rombach et al. 2022). Architecture (LDM's ddconfig) and the loss of LDM's
  # LPIPSWithDiscriminator: rec_loss ('l1' | 'l2') + perceptual_weight * LPIPS (only from the local
  # files lpips_vgg / lpips_lin, never downloaded) scaled by a learned log-variance, + kl_weight *
  # KL, + disc_weight * adaptive weight * hinge generator loss from step disc_start (disc_start < 0:
  # no discriminator).
  config.autoencoder = autoencoder = ml_collections.ConfigDict()
  autoencoder.ch = 128
  autoencoder.ch_mult = (1, 2, 4, 4)
  autoencoder.num_res_blocks = 2
  autoencoder.attn_resolutions = ()
  autoencoder.z_channels = 4
  autoencoder.embed_dim = 4
  autoencoder.num_groups = 32
  autoencoder.dropout = 0.0
  autoencoder.rec_loss = "l1"
  autoencoder.kl_weight = 1e-6
  autoencoder.perceptual_weight = 0.0
  autoencoder.lpips_vgg = placeholder(str)  # torchvision's vgg16-397923af.pth
  autoencoder.lpips_lin = placeholder(str)  # lpips' weights/v0.1/vgg.pth
  autoencoder.logvar_init = 0.0
  autoencoder.disc_start = 50001
  autoencoder.disc_weight = 0.5
  autoencoder.disc_ndf = 64
  autoencoder.disc_layers = 3
  autoencoder.batch_size = 12
  autoencoder.n_iters = 100000
  autoencoder.lr = 4.5e-6 * 12  # LDM: base_learning_rate x batch size
  autoencoder.beta1 = 0.5
  autoencoder.beta2 = 0.9
  autoencoder.log_freq = 100
  autoencoder.eval_freq = 1000
  autoencoder.snapshot_freq = 10000
  autoencoder.snapshot_freq_for_preemption = 1000
  autoencoder.num_recon = 16  # images in each reconstruction grid
  autoencoder.scale_num_images = 1024  # encoded training images behind the latent scale factor

  # Latent diffusion: a score model on the latents of the autoencoder trained (or imported) into
  # <autoencoder_workdir>/autoencoder. scale_factor 0: 1/std of the encoded training latents, computed
  # when that autoencoder finished training and stored beside its checkpoint (LDM's scale_by_std);
  # > 0: this factor (Stable Diffusion's VAE: 0.18215).
  config.latent = latent = ml_collections.ConfigDict()
  latent.autoencoder_workdir = placeholder(str)
  latent.scale_factor = 0.0

  # ControlNet (Zhang et al. 2023; experiment/controlnet.py): control_type non-empty makes the model
  # the frozen network of controlnet.base_workdir plus a trainable ControlNet that sees the control
  # image (--mode train_controlnet, then --mode sample [--control FOLDER]).
  config.controlnet = controlnet = ml_collections.ConfigDict()
  controlnet.control_type = ""  # one of experiment/controlnet.CONTROL_TYPES, e.g. 'sobel_edges'
  controlnet.base_workdir = placeholder(str)  # the trained base model's workdir
  controlnet.drop_prob = 0.0  # training: the control image is replaced by zeros (null control)
  controlnet.control_scale = 1.0  # sampling: multiplies every residual (0: the base model)
  controlnet.guidance_scale = 0.0  # sampling: w of (1 + w) f(control) - w f(null control)
  controlnet.control_depth = 0  # DiT: blocks in the trainable copy (0: half of them)
  controlnet.hint_channels = (16, 16, 32, 32)  # the hint encoder's 3x3 convolutions

  # Super-resolution (SR3, cascaded diffusion): factor > 1 makes the score network take the
  # factor-times average-pooled image (experiment/super_resolution.py), noised at training by the
  # SDE's forward process at level s ~ U[0, aug_max] (CDM's conditioning augmentation) and at
  # sampling at s = sample_aug_level.
  config.super_resolution = super_resolution = ml_collections.ConfigDict()
  super_resolution.factor = 1
  super_resolution.aug_max = 0.0
  super_resolution.sample_aug_level = 0.0

  # Cascade (--mode sample with base_workdir set): the base run's samples upsampled by each stage,
  # a super-resolution run (experiment/cascade.py).
  config.cascade = cascade = ml_collections.ConfigDict()
  cascade.base_config = placeholder(str)
  cascade.base_workdir = placeholder(str)
  cascade.stage_configs = ()
  cascade.stage_workdirs = ()

  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.n_steps_each = 1
  sampling.noise_removal = True
  sampling.probability_flow = False
  sampling.snr = 0.16
  # Options of the other samplers (config.sampling.method in score_sde.samplers.SAMPLERS; README
  # table). None keeps the sampler's own default; eps None is the SDE's (1e-5 VE, 1e-3 VP/sub-VP).
  sampling.eps = placeholder(float)
  sampling.num_steps = placeholder(int)  # ddim 50, dpm_solver 20, edm 18, flow 8, consistency 1
  sampling.rtol = placeholder(float)  # ode 1e-5, adaptive_sde 1e-2
  sampling.atol = placeholder(float)  # ode 1e-5, adaptive_sde 0.0078
  sampling.solver = placeholder(str)  # ode: tsit5 | dopri5 | dopri8 | bosh3 | heun; flow: euler | heun
  sampling.step_lr = placeholder(float)  # ald (required there)
  sampling.eta = placeholder(float)  # ddim: 0 deterministic, 1 DDPM-like
  sampling.order = placeholder(int)  # dpm_solver: 1, 2 or 3
  sampling.variant = placeholder(str)  # dpm_solver: multistep | singlestep
  sampling.predict = placeholder(str)  # dpm_solver: data (DPM-Solver++) | noise
  sampling.spacing = placeholder(str)  # dpm_solver: logsnr | time | karras
  sampling.stochastic = placeholder(bool)  # dpm_solver: SDE variant
  sampling.lower_order_final = placeholder(bool)  # dpm_solver
  sampling.rho = placeholder(float)  # dpm_solver 'karras' spacing and edm: 7
  sampling.s_churn = placeholder(float)  # edm (Algorithm 2)
  sampling.s_tmin = placeholder(float)
  sampling.s_tmax = placeholder(float)
  sampling.s_noise = placeholder(float)
  sampling.safety = placeholder(float)  # adaptive_sde
  sampling.exponent = placeholder(float)
  sampling.h_init = placeholder(float)
  sampling.max_attempts = placeholder(int)
  sampling.sigmas = placeholder(tuple)  # consistency: the σ of each step, descending
  sampling.sigma_min = placeholder(float)  # consistency (None: config.consistency's)
  sampling.sigma_max = placeholder(float)  # None: a consistency model's trained σ_max, else σ(T)
  # Class-conditional sampling (docs/controllable.md): 'none', 'cfg' (classifier-free guidance of a
  # model with num_classes > 0) or 'classifier' (a noise-conditional classifier trained with
  # --mode train_classifier). class_label -1 cycles through all classes.
  sampling.guidance = "none"
  sampling.guidance_scale = 1.0
  sampling.class_label = -1

  config.eval = evaluate = ml_collections.ConfigDict()
  evaluate.begin_ckpt = 9
  evaluate.end_ckpt = 26
  evaluate.batch_size = 1024
  evaluate.enable_sampling = False
  evaluate.num_samples = 50000
  evaluate.enable_loss = True
  evaluate.enable_bpd = False
  evaluate.bpd_dataset = "test"
  evaluate.bpd_num_repeats = 5  # passes over the bits/dim split, each with fresh dequantization
  # Step-size control of the bits/dim ODE solves: 'per_sample' (a sample's bits/dim independent of
  # its batch) or 'batch' (one error norm over the batch, as the reference's scipy RK45).
  evaluate.bpd_step_control = "per_sample"
  # Inception metrics (FID, KID, IS), computed when Inception weights are given (docs/metrics.md).
  evaluate.fid_stats_split = "train"  # the reference split, as for published CIFAR-10 FIDs
  evaluate.fid_stats_num_images = 0  # cap on the reference images; 0 takes the whole split
  evaluate.fid_stats_path = placeholder(str)  # None: <workdir>/fid_stats/<dataset>_<split>_<size>.npz
  evaluate.inception_batch_size = 50  # images per Inception forward pass
  evaluate.enable_precision_recall = False  # k-NN precision/recall: num_samples x num_reference distances

  config.data = data = ml_collections.ConfigDict()
  data.dataset = "CIFAR10"
  data.image_size = 32
  data.random_flip = True
  data.centered = False
  data.uniform_dequantization = False
  data.num_channels = 3
  # Source-specific fields (see docs/data.md); typed placeholders so `--config.data.path=...` works.
  data.category = placeholder(str)  # LSUN category, e.g. 'bedroom'
  data.path = placeholder(str)  # image folder, for dataset 'folder'
  data.tfds_name = placeholder(str)  # any tfds image dataset, for dataset 'TFDS'
  data.data_dir = placeholder(str)  # tfds data directory; None means tfds' default

  config.model = model = ml_collections.ConfigDict()
  model.sigma_min = 0.01
  model.sigma_max = 50.
  model.num_scales = 1000
  model.beta_min = 0.1
  model.beta_max = 20.
  model.dropout = 0.1
  model.embedding_type = "fourier"
  model.num_classes = 0  # > 0: class-conditional score network (a null class for CFG)
  # EMA decay min(ema_rate, (1 + n)/(10 + n)) after n updates, as the PyTorch reference; False gives
  # the JAX reference's constant ema_rate (bit-compatible with its runs).
  model.ema_warmup = True
  # Accelerator options of ncsnpp, ddpm and dit (docs/performance.md): the dtype the network
  # computes in, "float32" or "bfloat16" (parameters, optimiser, EMA and loss stay float32), and
  # jax.checkpoint per residual/attention/DiT block (less activation memory, ~1 more forward).
  model.compute_dtype = "float32"
  model.remat = False
  # Apply the network to chunks of this many examples (0: the whole batch at once); the same
  # function, faster on a CPU for 32x32 networks (docs/performance.md, "Batch chunks").
  model.batch_chunk = 0

  config.optim = optim = ml_collections.ConfigDict()
  optim.weight_decay = 0.
  optim.optimizer = "Adam"
  optim.lr = 2e-4
  optim.beta1 = 0.9
  optim.eps = 1e-8
  optim.warmup = 5000
  optim.grad_clip = 1.

  # Noise-conditional classifier for classifier guidance (--mode train_classifier): the reference's
  # WRN-28-10 on CIFAR-10.
  config.classifier = classifier = ml_collections.ConfigDict()
  classifier.depth = 28
  classifier.widen_factor = 10
  classifier.num_classes = 10
  classifier.n_iters = 100000
  classifier.batch_size = 128
  classifier.lr = 2e-4
  classifier.warmup = 1000
  classifier.log_freq = 100
  classifier.eval_freq = 1000
  classifier.snapshot_freq = 10000

  config.seed = 42
  return config

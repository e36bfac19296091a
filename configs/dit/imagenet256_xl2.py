r"""DiT-XL/2 on ImageNet 256x256 in the latent space of Stable Diffusion's VAE (Peebles & Xie 2023):
the paper's settings. 32x32x4 latents scaled by 0.18215, AdamW lr 1e-4 without weight decay,
batch 256, no warm-up, EMA 0.9999, the linear VP/DDPM schedule (β 1e-4 to 0.02 over 1000 steps:
beta_min 0.1, beta_max 20), ε prediction with the learned-σ channels kept (for checkpoint import;
no loss here trains them), 1000 classes + the null class, label dropout 0.1, CFG scale 1.5
(guidance_scale 0.5 here: this codebase's w is Ho & Salimans', DiT's scale is 1 + w).

First import the VAE (diffusers' stabilityai/sd-vae-ft-ema, or the VAE inside an SD .ckpt) as an
autoencoder work directory, then train:

    score-sde-convert --config configs/dit/imagenet256_xl2.py --autoencoder \
        --source sd-vae-ft-ema/diffusion_pytorch_model.safetensors --out runs/sd_vae --scale_factor 0.18215
    python main.py --config configs/dit/imagenet256_xl2.py --workdir runs/dit_xl2_imagenet256 --mode train

The dataset is not shipped and never downloaded: ImageNet (ILSVRC 2012) must be prepared for
tensorflow-datasets as `imagenet2012` (manual download of the archives into tfds' manual_dir, then
`tfds build imagenet2012` once, which writes array_record files) and config.data.data_dir set to
that directory; or point config.data.dataset='folder' / data.path at a folder of 256x256 images
(unconditional labels then: set model.num_classes=0). DiT also centre-crops to 256 (ADM's crop) and
flips horizontally.
Expected (published): FID-50K 2.27 with cfg 1.5 (250 DDPM steps; DiT guides only the first three
latent channels, this codebase guides all four) after 7M steps on TPU v3-256.
"""
from configs import architectures, default_cifar10_configs


def get_config():
  config = default_cifar10_configs.get_default_configs()
  training = config.training
  training.sde = "vpsde"
  training.continuous = False
  training.reduce_mean = True
  training.loss = "ddpm"
  training.batch_size = 256
  training.n_iters = 7000000
  training.n_jitted_steps = 1
  training.snapshot_freq = 50000
  training.snapshot_freq_for_preemption = 5000
  training.class_dropout = 0.1

  data = config.data
  data.dataset = "TFDS"
  data.tfds_name = "imagenet2012"
  data.image_size = 256
  data.num_channels = 3
  data.centered = True
  data.random_flip = True

  config.model.update(architectures.dit("XL", 2, ema_rate=0.9999, learn_sigma=True))
  config.model.num_classes = 1000
  config.model.num_scales = 1000

  config.optim.optimizer = "Adam"  # AdamW with weight decay 0 is Adam
  config.optim.lr = 1e-4
  config.optim.weight_decay = 0.0
  config.optim.warmup = 0
  config.optim.grad_clip = -1.0  # DiT does not clip

  # Stable Diffusion's VAE (KL-f8): the autoencoder imported into runs/sd_vae.
  config.autoencoder.update(ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2, attn_resolutions=(),
                            z_channels=4, embed_dim=4, num_groups=32, disc_start=-1)
  config.latent.autoencoder_workdir = "runs/sd_vae"
  config.latent.scale_factor = 0.18215

  config.sampling.method = "pc"
  config.sampling.predictor = "ancestral_sampling"
  config.sampling.corrector = "none"
  config.sampling.guidance = "cfg"
  config.sampling.guidance_scale = 0.5  # Ho & Salimans' w; DiT's "cfg scale 1.5" is 1 + w
  config.eval.enable_bpd = False
  config.eval.enable_sampling = True
  config.eval.num_samples = 50000
  return config

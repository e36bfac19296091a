"""Tests for configs/: every experiment file loads through ml_collections' config flag, has the
fields the library reads with sensible types and values, and reproduces the reference settings.

The expected values in the spot checks were read from the reference implementation's config
files (yang-song/score_sde, configs/) and its README.
"""
import ast
import copy
import pathlib

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from configs import default_celeba_configs, default_cifar10_configs, default_lsun_configs
from score_sde.diffusion import sde as sde_lib
from score_sde.experiment import builders
from score_sde.io import datasets
from score_sde.samplers import SAMPLERS

# ml_collections' config loader uses importlib's deprecated load_module(); not ours to fix.
pytestmark = pytest.mark.filterwarnings(
    "ignore:the load_module\\(\\) method is deprecated:DeprecationWarning")

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"
NOT_EXPERIMENTS = ("__init__.py", "architectures.py")

# The experiment files of the reference codebase; this project keeps the same paths.
REFERENCE_EXPERIMENTS = {
    "subvp/cifar10_ddpm_continuous.py",
    "subvp/cifar10_ddpmpp_continuous.py",
    "subvp/cifar10_ddpmpp_deep_continuous.py",
    "subvp/cifar10_ncsnpp_continuous.py",
    "subvp/cifar10_ncsnpp_deep_continuous.py",
    "ve/bedroom_ncsnpp_continuous.py",
    "ve/celeba_ncsnpp.py",
    "ve/celebahq_256_ncsnpp_continuous.py",
    "ve/celebahq_ncsnpp_continuous.py",
    "ve/church_ncsnpp_continuous.py",
    "ve/cifar10_ddpm.py",
    "ve/cifar10_ncsnpp.py",
    "ve/cifar10_ncsnpp_continuous.py",
    "ve/cifar10_ncsnpp_deep_continuous.py",
    "ve/ffhq_256_ncsnpp_continuous.py",
    "ve/ffhq_ncsnpp_continuous.py",
    "ve/ncsn/celeba.py",
    "ve/ncsn/celeba_124.py",
    "ve/ncsn/celeba_1245.py",
    "ve/ncsn/celeba_5.py",
    "ve/ncsn/cifar10.py",
    "ve/ncsn/cifar10_124.py",
    "ve/ncsn/cifar10_1245.py",
    "ve/ncsn/cifar10_5.py",
    "ve/ncsnv2/bedroom.py",
    "ve/ncsnv2/celeba.py",
    "ve/ncsnv2/cifar10.py",
    "vp/cifar10_ddpmpp.py",
    "vp/cifar10_ddpmpp_continuous.py",
    "vp/cifar10_ddpmpp_deep_continuous.py",
    "vp/cifar10_ncsnpp.py",
    "vp/cifar10_ncsnpp_continuous.py",
    "vp/cifar10_ncsnpp_deep_continuous.py",
    "vp/ddpm/bedroom.py",
    "vp/ddpm/celebahq.py",
    "vp/ddpm/church.py",
    "vp/ddpm/cifar10.py",
    "vp/ddpm/cifar10_continuous.py",
    "vp/ddpm/cifar10_unconditional.py",
}


def _experiment_files() -> list[str]:
  return sorted(
      str(path.relative_to(CONFIG_DIR)) for path in CONFIG_DIR.rglob("*.py")
      if path.name not in NOT_EXPERIMENTS and not path.name.startswith("default_"))


EXPERIMENTS = _experiment_files()


def load(relpath: str, *overrides: str) -> ml_collections.ConfigDict:
  """Loads a config as `main.py --config configs/<relpath> --config.x=v ...` would."""
  argv = ["main.py", f"--config={CONFIG_DIR / relpath}", *overrides]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "config file", flag_values=flag_values,
                                  sys_argv=argv)
  flag_values(argv)
  return flag_values.config


@pytest.fixture(scope="module")
def configs() -> dict[str, ml_collections.ConfigDict]:
  return {relpath: load(relpath) for relpath in EXPERIMENTS}


def get(config, dotted: str):
  for key in dotted.split("."):
    config = config[key]
  return config


# ----------------------------------------------------------------------------------------------
# The file set.


def test_every_reference_experiment_has_a_config():
  assert REFERENCE_EXPERIMENTS <= set(EXPERIMENTS), sorted(REFERENCE_EXPERIMENTS - set(EXPERIMENTS))


def test_every_config_directory_is_a_package():
  for directory in {CONFIG_DIR, *(p.parent for p in CONFIG_DIR.rglob("*.py"))}:
    assert (directory / "__init__.py").is_file(), directory


# ----------------------------------------------------------------------------------------------
# Fields and types.

INT, FLOAT, BOOL, STR = int, float, bool, str
OPTIONAL_STR = (str, type(None))

REQUIRED_FIELDS = {
    "training": dict(batch_size=INT, n_iters=INT, snapshot_freq=INT, log_freq=INT, eval_freq=INT,
                     snapshot_freq_for_preemption=INT, snapshot_sampling=BOOL,
                     likelihood_weighting=BOOL, continuous=BOOL, n_jitted_steps=INT,
                     reduce_mean=BOOL, sde=STR, class_dropout=FLOAT, loss=OPTIONAL_STR,
                     sigma_data=FLOAT, p_mean=FLOAT, p_std=FLOAT),
    "sampling": dict(method=STR, predictor=STR, corrector=STR, n_steps_each=INT,
                     noise_removal=BOOL, probability_flow=BOOL, snr=FLOAT, guidance=STR,
                     guidance_scale=FLOAT, class_label=INT),
    "eval": dict(begin_ckpt=INT, end_ckpt=INT, batch_size=INT, enable_sampling=BOOL,
                 num_samples=INT, enable_loss=BOOL, enable_bpd=BOOL, bpd_dataset=STR,
                 bpd_num_repeats=INT, bpd_step_control=STR, fid_stats_split=STR, fid_stats_num_images=INT,
                 fid_stats_path=OPTIONAL_STR, inception_batch_size=INT,
                 enable_precision_recall=BOOL),
    "data": dict(dataset=STR, image_size=INT, random_flip=BOOL, centered=BOOL,
                 uniform_dequantization=BOOL, num_channels=INT, category=OPTIONAL_STR,
                 path=OPTIONAL_STR, tfds_name=OPTIONAL_STR, data_dir=OPTIONAL_STR),
    "model": dict(name=STR, sigma_min=FLOAT, sigma_max=FLOAT, num_scales=INT, beta_min=FLOAT,
                  beta_max=FLOAT, dropout=FLOAT, embedding_type=STR, scale_by_sigma=BOOL,
                  ema_rate=FLOAT, ema_warmup=BOOL, num_classes=INT),
    "classifier": dict(depth=INT, widen_factor=INT, num_classes=INT, n_iters=INT, batch_size=INT,
                       lr=FLOAT, warmup=INT, log_freq=INT, eval_freq=INT, snapshot_freq=INT),
    "optim": dict(weight_decay=FLOAT, optimizer=STR, lr=FLOAT, beta1=FLOAT, eps=FLOAT, warmup=INT,
                  grad_clip=FLOAT),
}
CNN_FIELDS = dict(normalization=STR, nonlinearity=STR, nf=INT)
UNET_FIELDS = dict(**CNN_FIELDS, ch_mult=tuple, num_res_blocks=INT, attn_resolutions=tuple,
                   resamp_with_conv=BOOL, conditional=BOOL)
NCSNPP_FIELDS = dict(fir=BOOL, fir_kernel=tuple, skip_rescale=BOOL, resblock_type=STR,
                     progressive=STR, progressive_input=STR, progressive_combine=STR,
                     attention_type=STR, init_scale=FLOAT, fourier_scale=FLOAT, conv_size=INT)
MODEL_FIELDS = {"ncsnpp": {**UNET_FIELDS, **NCSNPP_FIELDS}, "ddpm": UNET_FIELDS,
                **{name: dict(**CNN_FIELDS, interpolation=STR)
                   for name in ("ncsn", "ncsnv2_64", "ncsnv2_128", "ncsnv2_256")},
                "dit": dict(patch_size=INT, hidden_size=INT, depth=INT, num_heads=INT,
                            mlp_ratio=FLOAT, learn_sigma=BOOL, dtype=STR)}

CHOICES = {
    "training.sde": set(sde_lib.SDES),
    "sampling.method": set(SAMPLERS),
    "sampling.guidance": {"none", "cfg", "classifier"},
    "sampling.predictor": {"euler_maruyama", "reverse_diffusion", "ancestral_sampling", "none"},
    "sampling.corrector": {"langevin", "ald", "none"},
    "eval.bpd_dataset": {"train", "test"},
    "eval.fid_stats_split": {"train", "test"},
    "model.embedding_type": {"fourier", "positional"},
    "optim.optimizer": {"Adam"},
}
CNN_CHOICES = {  # every network but the transformer
    "model.normalization": {"GroupNorm", "InstanceNorm++"},
    "model.nonlinearity": {"swish", "elu"},
}
NCSNPP_CHOICES = {
    "model.resblock_type": {"biggan", "ddpm"},
    "model.progressive": {"none", "output_skip", "residual"},
    "model.progressive_input": {"none", "input_skip", "residual"},
    "model.progressive_combine": {"sum", "cat"},
    "model.attention_type": {"ddpm"},
}


def _check_type(config, dotted: str, expected_type) -> None:
  value = get(config, dotted)
  if expected_type in (int, float):  # bool is an int subclass; accept neither for numbers
    assert not isinstance(value, bool) and isinstance(value, expected_type), (dotted, value)
  else:
    assert isinstance(value, expected_type), (dotted, value)


@pytest.mark.parametrize("relpath", EXPERIMENTS)
def test_required_fields_and_types(relpath, configs):
  config = configs[relpath]
  assert isinstance(config, ml_collections.ConfigDict)
  assert isinstance(config.seed, int)
  for section, fields in REQUIRED_FIELDS.items():
    for field, expected_type in fields.items():
      _check_type(config, f"{section}.{field}", expected_type)
  assert config.model.name in MODEL_FIELDS, config.model.name
  for field, expected_type in MODEL_FIELDS[config.model.name].items():
    _check_type(config, f"model.{field}", expected_type)
  for field in ("ch_mult", "attn_resolutions", "fir_kernel"):
    if field in config.model:
      assert all(isinstance(v, int) for v in config.model[field]), (field, config.model[field])


@pytest.mark.parametrize("relpath", EXPERIMENTS)
def test_values_are_sensible(relpath, configs):
  config = configs[relpath]
  choices = dict(CHOICES, **(NCSNPP_CHOICES if config.model.name == "ncsnpp" else {}),
                 **(CNN_CHOICES if config.model.name != "dit" else {}))
  for dotted, allowed in choices.items():
    assert get(config, dotted) in allowed, (dotted, get(config, dotted))
  # The dataset names must be ones the input pipeline accepts (case-insensitively).
  assert config.data.dataset.lower() in {name.lower() for name in datasets.DATASETS}
  if config.data.dataset == "LSUN":
    assert config.data.category
  model, training = config.model, config.training
  assert 0 < model.sigma_min < model.sigma_max
  assert 0 < model.beta_min < model.beta_max
  assert model.num_scales > 1 and 0.0 <= model.dropout < 1.0 and 0.0 <= model.ema_rate < 1.0
  assert 0 < config.optim.lr < 1e-2 and 0 < config.optim.beta1 < 1 and config.optim.warmup >= 0
  # The reference checkpoints and logs every `n_jitted_steps` steps.
  for freq in ("log_freq", "eval_freq", "snapshot_freq", "snapshot_freq_for_preemption"):
    assert training[freq] % training.n_jitted_steps == 0, freq
  assert config.eval.begin_ckpt <= config.eval.end_ckpt
  # Combinations the losses and samplers do not define.
  if training.likelihood_weighting:
    assert training.continuous
  if training.sde == "subvpsde":
    assert training.continuous and config.sampling.predictor != "ancestral_sampling"
  if "ch_mult" in model:  # U-Nets halve the resolution len(ch_mult) - 1 times
    assert config.data.image_size % 2 ** (len(model.ch_mult) - 1) == 0
    resolutions = {config.data.image_size // 2**i for i in range(len(model.ch_mult))}
    assert set(model.attn_resolutions) <= resolutions


@pytest.mark.parametrize("relpath", EXPERIMENTS)
def test_library_objects_build_from_every_config(relpath, configs):
  """builders maps every config onto the SDE, score network, classifier and dataset."""
  config = copy.deepcopy(configs[relpath])
  if config.data.dataset == "folder":
    config.data.path = "images"  # the one field the user must give
  assert type(builders.get_sde(config)) is sde_lib.SDES[config.training.sde]
  model = builders.get_model(config)
  if config.model.name == "dit":
    assert (model.patch_size, model.hidden_size, model.depth, model.num_heads) == (
        config.model.patch_size, config.model.hidden_size, config.model.depth,
        config.model.num_heads)
  else:
    assert (model.nf, model.centered, model.num_scales) == (
        config.model.nf, config.data.centered, config.model.num_scales)
  assert builders.get_classifier(config).num_classes == config.classifier.num_classes
  spec = builders.data_spec(config)
  assert (spec.dataset.lower(), spec.image_size, spec.num_channels) == (
      config.data.dataset.lower(), config.data.image_size, config.data.num_channels)


FAMILY_SDES = {"ve": "vesde", "vp": "vpsde", "subvp": "subvpsde"}


@pytest.mark.parametrize("relpath", [r for r in EXPERIMENTS if r.split("/")[0] in FAMILY_SDES])
def test_family_directory_matches_sde(relpath, configs):
  assert configs[relpath].training.sde == FAMILY_SDES[relpath.split("/")[0]]


@pytest.mark.parametrize("relpath", EXPERIMENTS)
def test_docstring_gives_its_own_command_and_expected_result(relpath):
  source = (CONFIG_DIR / relpath).read_text()
  doc = ast.get_docstring(ast.parse(source))
  assert doc, f"configs/{relpath} has no module docstring"
  command = " ".join(doc.replace("\\\n", " ").split())
  assert f"python main.py --config configs/{relpath} --workdir " in command, relpath
  assert "--mode " in command and "Expected" in doc, relpath


def test_docstring_workdirs_are_distinct():
  workdirs = []
  for relpath in EXPERIMENTS:
    doc = ast.get_docstring(ast.parse((CONFIG_DIR / relpath).read_text()))
    workdirs.append(doc.split("--workdir ", 1)[1].split()[0])
  assert len(set(workdirs)) == len(workdirs)


def test_folder_datasets_say_where_the_images_are(configs):
  folder_experiments = [r for r in EXPERIMENTS if configs[r].data.dataset == "folder"]
  assert len(folder_experiments) >= 5  # FFHQ and CelebA-HQ at 256 and 1024, DDPM CelebA-HQ
  for relpath in folder_experiments:
    # The user must give the folder; an unset path is an error in the input pipeline.
    assert configs[relpath].data.path is None, relpath
    doc = ast.get_docstring(ast.parse((CONFIG_DIR / relpath).read_text()))
    assert "--config.data.path=" in doc, relpath


# ----------------------------------------------------------------------------------------------
# Values read from the reference.

DEFAULTS = {
    default_cifar10_configs: {
        "training.batch_size": 128, "training.n_iters": 1300001, "training.snapshot_freq": 50000,
        "training.log_freq": 50, "training.eval_freq": 100,
        "training.snapshot_freq_for_preemption": 10000, "training.snapshot_sampling": True,
        "training.likelihood_weighting": False, "training.continuous": True,
        "training.n_jitted_steps": 5, "training.reduce_mean": False,
        "sampling.n_steps_each": 1, "sampling.noise_removal": True,
        "sampling.probability_flow": False, "sampling.snr": 0.16,
        "eval.begin_ckpt": 9, "eval.end_ckpt": 26, "eval.batch_size": 1024,
        "eval.enable_sampling": False, "eval.num_samples": 50000, "eval.enable_loss": True,
        "eval.enable_bpd": False, "eval.bpd_dataset": "test", "eval.bpd_num_repeats": 5,
        "data.dataset": "CIFAR10", "data.image_size": 32, "data.random_flip": True,
        "data.centered": False, "data.uniform_dequantization": False, "data.num_channels": 3,
        "data.data_dir": None,
        "model.sigma_min": 0.01, "model.sigma_max": 50.0, "model.num_scales": 1000,
        "model.beta_min": 0.1, "model.beta_max": 20.0, "model.dropout": 0.1,
        "model.embedding_type": "fourier",
        "optim.weight_decay": 0.0, "optim.optimizer": "Adam", "optim.lr": 2e-4,
        "optim.beta1": 0.9, "optim.eps": 1e-8, "optim.warmup": 5000, "optim.grad_clip": 1.0,
        "seed": 42,
    },
    default_celeba_configs: {
        "training.batch_size": 128, "training.n_iters": 1300001,
        "training.snapshot_freq_for_preemption": 10000, "sampling.snr": 0.17,
        "eval.begin_ckpt": 1, "eval.end_ckpt": 26, "eval.batch_size": 1024,
        "eval.enable_sampling": True, "data.dataset": "CELEBA", "data.image_size": 64,
        "model.sigma_max": 90.0, "model.num_scales": 1000, "model.dropout": 0.1, "seed": 42,
    },
    default_lsun_configs: {
        "training.batch_size": 64, "training.n_iters": 2400001,
        "training.snapshot_freq_for_preemption": 5000, "sampling.snr": 0.075,
        "eval.begin_ckpt": 50, "eval.end_ckpt": 96, "eval.batch_size": 512,
        "eval.enable_sampling": True, "data.dataset": "LSUN", "data.image_size": 256,
        "model.sigma_max": 378.0, "model.num_scales": 2000, "model.dropout": 0.0,
        "optim.lr": 2e-4, "seed": 42,
    },
}


@pytest.mark.parametrize("module", list(DEFAULTS), ids=lambda m: m.__name__.split(".")[-1])
def test_defaults_match_reference(module):
  config = module.get_default_configs()
  for dotted, expected in DEFAULTS[module].items():
    assert get(config, dotted) == expected, (dotted, get(config, dotted), expected)
  # As in the reference, the defaults leave the SDE, sampler and network to the experiment.
  assert "sde" not in config.training and "method" not in config.sampling
  assert "name" not in config.model


SPOT_CHECKS = {
    "ve/cifar10_ncsnpp_continuous.py": {
        "training.sde": "vesde", "training.continuous": True, "training.n_iters": 1300001,
        "training.reduce_mean": False, "sampling.predictor": "reverse_diffusion",
        "sampling.corrector": "langevin", "sampling.snr": 0.16, "data.centered": False,
        "model.name": "ncsnpp", "model.sigma_max": 50.0, "model.sigma_min": 0.01,
        "model.ema_rate": 0.999, "model.scale_by_sigma": True, "model.fir": True,
        "model.fir_kernel": (1, 3, 3, 1), "model.progressive": "none",
        "model.progressive_input": "residual", "model.progressive_combine": "sum",
        "model.embedding_type": "fourier", "model.fourier_scale": 16.0, "model.nf": 128,
        "model.ch_mult": (1, 2, 2, 2), "model.num_res_blocks": 4, "model.attn_resolutions": (16,),
        "model.init_scale": 0.0, "model.skip_rescale": True, "model.resblock_type": "biggan",
        "model.dropout": 0.1,
    },
    "ve/cifar10_ncsnpp_deep_continuous.py": {
        "training.n_iters": 950001, "model.num_res_blocks": 8, "model.ema_rate": 0.999,
        "model.embedding_type": "fourier",
    },
    "ve/cifar10_ncsnpp.py": {
        "training.continuous": False, "model.embedding_type": "positional", "model.fir": True,
    },
    "vp/cifar10_ddpmpp_continuous.py": {
        "training.sde": "vpsde", "training.reduce_mean": True, "data.centered": True,
        "sampling.predictor": "euler_maruyama", "sampling.corrector": "none",
        "model.fir": False, "model.progressive_input": "none", "model.ema_rate": 0.9999,
        "model.scale_by_sigma": False, "model.embedding_type": "positional",
    },
    "vp/cifar10_ddpmpp.py": {
        "training.continuous": False, "sampling.predictor": "ancestral_sampling",
    },
    "vp/cifar10_ncsnpp.py": {
        "training.continuous": False, "sampling.predictor": "reverse_diffusion",
        "sampling.corrector": "none", "model.fir": True, "model.progressive_input": "residual",
    },
    "subvp/cifar10_ddpmpp_deep_continuous.py": {
        "training.sde": "subvpsde", "training.continuous": True, "training.reduce_mean": True,
        "training.n_iters": 950001, "data.centered": True, "model.name": "ncsnpp",
        "model.num_res_blocks": 8, "model.ema_rate": 0.9999, "model.embedding_type": "positional",
        "model.fir": False, "model.progressive_input": "none", "model.scale_by_sigma": False,
        "sampling.predictor": "euler_maruyama", "sampling.corrector": "none",
        "model.beta_min": 0.1, "model.beta_max": 20.0,
    },
    "subvp/cifar10_ddpm_continuous.py": {
        "model.name": "ddpm", "model.num_res_blocks": 2, "model.ema_rate": 0.9999,
        "training.continuous": True,
    },
    "ve/celebahq_256_ncsnpp_continuous.py": {
        "model.sigma_max": 348.0, "sampling.snr": 0.075, "model.num_scales": 2000,
        "data.image_size": 256, "data.dataset": "folder", "training.batch_size": 64,
        "training.n_iters": 2400001, "model.ch_mult": (1, 1, 2, 2, 2, 2, 2),
        "model.num_res_blocks": 2, "model.progressive": "output_skip",
        "model.progressive_input": "input_skip", "model.dropout": 0.0, "model.ema_rate": 0.999,
        "model.embedding_type": "fourier",
    },
    "ve/church_ncsnpp_continuous.py": {
        "data.dataset": "LSUN", "data.category": "church_outdoor", "model.sigma_max": 380.0,
    },
    "ve/bedroom_ncsnpp_continuous.py": {
        "data.category": "bedroom", "model.sigma_max": 378.0,
    },
    "ve/ffhq_ncsnpp_continuous.py": {
        "data.image_size": 1024, "training.batch_size": 8, "training.reduce_mean": True,
        "sampling.snr": 0.15, "eval.batch_size": 1024, "eval.begin_ckpt": 1, "eval.end_ckpt": 96,
        "model.sigma_max": 1348.0, "model.num_scales": 2000, "model.ema_rate": 0.9999,
        "model.nf": 16, "model.ch_mult": (1, 2, 4, 8, 16, 32, 32, 32), "model.num_res_blocks": 1,
        "model.dropout": 0.0,
    },
    "ve/celebahq_ncsnpp_continuous.py": {
        "data.image_size": 1024, "training.reduce_mean": False, "model.nf": 16,
    },
    "ve/ncsn/cifar10.py": {
        "model.name": "ncsn", "model.sigma_max": 1.0, "model.num_scales": 10,
        "model.ema_rate": 0.0, "model.scale_by_sigma": False, "training.continuous": False,
        "sampling.predictor": "none", "sampling.corrector": "ald", "sampling.n_steps_each": 100,
        "sampling.snr": 0.316, "optim.lr": 1e-3, "optim.warmup": 0, "optim.grad_clip": -1.0,
    },
    "ve/ncsn/cifar10_1245.py": {
        "model.sigma_max": 50.0, "model.num_scales": 232, "model.ema_rate": 0.999,
        "sampling.n_steps_each": 5, "sampling.snr": 0.176,
    },
    "ve/ncsn/celeba.py": {"training.sde": "vesde", "model.sigma_max": 1.0},
    "ve/ncsn/celeba_124.py": {
        "model.sigma_max": 90.0, "model.num_scales": 500, "sampling.snr": 0.128,
        "model.ema_rate": 0.0,
    },
    "ve/ncsnv2/cifar10.py": {
        "model.name": "ncsnv2_64", "model.num_scales": 232, "model.scale_by_sigma": True,
        "optim.lr": 1e-4,
    },
    "ve/ncsnv2/bedroom.py": {
        "model.name": "ncsnv2_128", "data.image_size": 128, "data.category": "bedroom",
        "model.sigma_max": 190.0, "model.num_scales": 1086, "training.batch_size": 128,
        "training.continuous": False, "sampling.snr": 0.095, "sampling.n_steps_each": 3,
        "model.ema_rate": 0.9999,
    },
    "vp/ddpm/bedroom.py": {
        "model.name": "ddpm", "optim.lr": 2e-5, "model.num_scales": 1000,
        "model.ch_mult": (1, 1, 2, 2, 4, 4), "sampling.predictor": "ancestral_sampling",
        "training.continuous": False, "data.centered": True,
    },
    "vp/ddpm/cifar10_unconditional.py": {"model.conditional": False},
    "vp/ddpm/cifar10_continuous.py": {
        "training.continuous": True, "sampling.predictor": "euler_maruyama",
        "model.conditional": True,
    },
}


@pytest.mark.parametrize("relpath", sorted(SPOT_CHECKS))
def test_values_match_reference(relpath, configs):
  config = configs[relpath]
  for dotted, expected in SPOT_CHECKS[relpath].items():
    assert get(config, dotted) == expected, (dotted, get(config, dotted), expected)


# ----------------------------------------------------------------------------------------------
# Loading and overriding.


def test_command_line_overrides():
  config = load("ve/ffhq_ncsnpp_continuous.py", "--config.model.sigma_max=600.5",
                "--config.data.path=/data/ffhq", "--config.model.ch_mult=(1, 2)",
                "--config.model.fir_kernel=(1, 1)", "--config.training.batch_size=4")
  assert config.model.sigma_max == 600.5 and config.data.path == "/data/ffhq"
  assert config.model.ch_mult == (1, 2) and config.model.fir_kernel == (1, 1)
  assert config.training.batch_size == 4


def test_bad_override_names_the_field():
  with pytest.raises(AttributeError, match="sigmamax"):
    load("ve/cifar10_ncsnpp_continuous.py", "--config.model.sigmamax=3.0")
  with pytest.raises(flags.IllegalFlagValueError, match="config.model.nf"):
    load("ve/cifar10_ncsnpp_continuous.py", "--config.model.nf=wide")


def test_configs_are_independent_objects():
  # A derived config must not share mutable state with its base.
  from configs.ve import cifar10_ncsnpp_continuous, cifar10_ncsnpp_deep_continuous
  deep = cifar10_ncsnpp_deep_continuous.get_config()
  deep.model.nf = 7
  deep.data.path = "/elsewhere"
  base = cifar10_ncsnpp_continuous.get_config()
  assert base.model.nf == 128 and base.model.num_res_blocks == 4 and base.data.path is None

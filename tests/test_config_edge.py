"""The ConfigDict stops at score_sde.experiment: builders maps it onto the libraries, naming the
config field in every error, and no library module takes or imports a config."""
import ast
import pathlib

import ml_collections
import pytest

from score_sde.diffusion import sde as sde_lib
from score_sde.experiment import builders
from score_sde.models import classifier, ncsn
from score_sde.models.ncsnpp import NCSNpp

PACKAGE = pathlib.Path(builders.__file__).resolve().parents[1]


def config_reads(source: str) -> list[str]:
  """Where a module's source takes a parameter named `config` or imports ml_collections."""
  found = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
      a = node.args
      params = a.posonlyargs + a.args + a.kwonlyargs + [p for p in (a.vararg, a.kwarg) if p]
      found += [f"line {node.lineno}: parameter config" for p in params if p.arg == "config"]
    elif isinstance(node, ast.Import):
      found += [f"line {node.lineno}: import {n.name}" for n in node.names
                if n.name.split(".")[0] == "ml_collections"]
    elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ml_collections":
      found.append(f"line {node.lineno}: from {node.module} import")
  return found


def test_the_detector_finds_config_reads():
  assert config_reads("def f(x, *, config=None):\n  pass\n") == ["line 1: parameter config"]
  assert config_reads("g = lambda config: config.model\n") == ["line 1: parameter config"]
  assert len(config_reads("import ml_collections\nfrom ml_collections import config_dict\n")) == 2
  assert config_reads("def f(configuration, cfg):\n  config = 1\n") == []


def test_library_modules_do_not_read_configs():
  library = [p for p in PACKAGE.rglob("*.py") if "experiment" not in p.relative_to(PACKAGE).parts]
  assert len(library) > 30 and PACKAGE / "models" / "ncsn.py" in library
  reads = {str(p.relative_to(PACKAGE)): config_reads(p.read_text()) for p in library}
  assert {path: found for path, found in reads.items() if found} == {}


def ncsnpp_config(**model):
  config = ml_collections.ConfigDict()
  config.training = dict(sde="vesde", continuous=True)
  config.data = dict(image_size=8, num_channels=3, centered=False)
  config.model = dict(
      name="ncsnpp", scale_by_sigma=True, normalization="GroupNorm", nonlinearity="swish",
      nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), resamp_with_conv=True,
      conditional=True, fir=True, fir_kernel=[1, 3, 3, 1], skip_rescale=True,
      resblock_type="BigGAN", progressive="none", progressive_input="residual",
      progressive_combine="sum", init_scale=0.0, dropout=0.1, sigma_min=0.01, sigma_max=50.0,
      num_scales=1000, beta_min=0.1, beta_max=20.0)
  config.model.update(model)
  return config


def test_get_sde_by_config_name():
  config = ncsnpp_config(sigma_max=5.0, num_scales=10)
  config.training.sde = "VESDE"
  assert builders.get_sde(config) == sde_lib.VESDE(sigma_min=0.01, sigma_max=5.0, N=10)
  config.training.sde = "subvpsde"
  assert builders.get_sde(config) == sde_lib.SubVPSDE(beta_min=0.1, beta_max=20.0, N=10)
  config.training.sde = "rectified_flow"
  assert builders.get_sde(config) == sde_lib.RectifiedFlow(N=10)
  config.training.sde = "vpsd"
  with pytest.raises(ValueError, match=r"config.training.sde='vpsd'.*\['vesde', 'vpsde', "
                                       r"'subvpsde', 'rectified_flow'\]"):
    builders.get_sde(config)


def test_get_model_maps_the_fields():
  model = builders.get_model(ncsnpp_config())
  assert model == NCSNpp(
      nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.1, fir=True,
      fir_kernel=(1, 3, 3, 1), resblock_type="biggan", init_scale=0.0, centered=False)


def refinenet_config(name, image_size=32, **model):
  config = ml_collections.ConfigDict()
  config.data = dict(image_size=image_size, num_channels=3, centered=False)
  config.model = dict(name=name, nf=8, normalization="InstanceNorm++", nonlinearity="ELU",
                      sigma_min=0.01, sigma_max=50.0, num_scales=10, **model)
  return config


def test_refinenet_models_and_their_defaults():
  v1 = builders.get_model(refinenet_config("ncsn", reference="pytorch"))
  assert v1 == ncsn.ncsn(image_size=32, reference="pytorch", nf=8, nonlinearity="elu",
                         sigma_min=0.01, sigma_max=50.0, num_scales=10, centered=False)
  assert v1.conditional and not v1.scale_by_sigma and v1.align_corners
  v2 = builders.get_model(refinenet_config("ncsnv2", image_size=128, scale_by_sigma=False))
  assert v2.stages == ncsn.ncsnv2_128(image_size=128).stages and not v2.scale_by_sigma
  assert builders.get_model(refinenet_config("ncsnv2_64")).scale_by_sigma


@pytest.mark.parametrize("config, message", [
    (ncsnpp_config(name="unet"), r"config.model.name='unet' is not valid; choose one of \['ncsnpp', 'ddpm', 'dit', 'ncsn',"),
    (refinenet_config("ncsn", num_classes=10), "config.model.num_classes=10"),
    (refinenet_config("ncsnv2_64", image_size=128), "config.data.image_size=128"),
    (refinenet_config("ncsn", reference="tf"), r"config.model.reference='tf'"),
    (ncsnpp_config(normalization="InstanceNorm"), "config.model.normalization='InstanceNorm'"),
    (ncsnpp_config(num_classes=10, conditional=False), "config.model.conditional=True"),
])
def test_errors_name_the_config_field(config, message):
  with pytest.raises(ValueError, match=message):
    builders.get_model(config)


def test_fourier_features_need_continuous_training_and_centered_is_required():
  config = ncsnpp_config()
  config.training.continuous = False
  with pytest.raises(ValueError, match=r"config.training.continuous=True"):
    builders.get_model(config)
  config = ncsnpp_config()
  config.data = dict(image_size=8, num_channels=3)
  with pytest.raises(ValueError, match="config.data.centered is required"):
    builders.get_model(config)


def test_classifier_fields():
  assert builders.get_classifier(ml_collections.ConfigDict()) == (
      classifier.NoiseConditionalWideResNet(depth=28, widen_factor=10, num_classes=10))
  config = ml_collections.ConfigDict({"classifier": dict(depth=10, widen_factor=2, lr=1e-3)})
  model = builders.get_classifier(config)
  assert (model.depth, model.widen_factor, model.num_classes) == (10, 2, 10)


def test_conversion_kwargs():
  kwargs = builders.conversion_kwargs(ncsnpp_config())
  assert (kwargs["image_size"], kwargs["num_channels"]) == (8, 3)
  assert kwargs["model"] == builders.get_model(ncsnpp_config())


@pytest.mark.parametrize("field, value, message", [
    ("training.batch_size", 0, r"config.training.batch_size=0 must be a positive"),
    ("eval.batch_size", -2, r"config.eval.batch_size=-2 must be a positive"),
    ("data.image_size", 32, r"attn_resolutions=\(8,\) names \[8\], which the network never reaches "
                            r"with config.data.image_size=32"),
    ("sampling.predictor", "euler", r"config.sampling.predictor='euler' is not valid; choose one "
                                    r"of \['euler_maruyama'"),
    ("sampling.corrector", "hmc", r"config.sampling.corrector='hmc' is not valid; choose one of "
                                  r"\['langevin', 'ald', 'none'\]"),
])
def test_cross_field_config_errors_come_before_any_work(field, value, message):
  config = _digits_config()
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ValueError, match=message):
    builders.build_experiment(config)


def _digits_config():
  from tests.helpers.tiny_config import tiny_config
  config = tiny_config()
  config.model.ch_mult = (1, 2)
  config.model.attn_resolutions = (8,)
  config.data.image_size = 16
  return config


def test_unknown_override_field_is_one_line(tmp_path):
  import os
  import subprocess
  import sys
  root = pathlib.Path(__file__).resolve().parents[1]
  result = subprocess.run(
      [sys.executable, "main.py", "--config", "configs/digits/ddpmpp_vp_small.py", "--workdir",
       str(tmp_path), "--config.training.nonexistent=1"],
      cwd=root, capture_output=True, text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [
      "Unknown config field 'nonexistent' in --config.training.nonexistent=1: the config file has no "
      "such field (spelling, or section?)."]
  assert not os.listdir(tmp_path)  # nothing was started

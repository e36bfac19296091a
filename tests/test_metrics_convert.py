"""Torch-free reading of `torch.save` files and conversion of the pytorch-fid Inception key layout.

The synthetic files are written without torch by `tests/helpers/torch_save.py`, in the zip layout
(torch >= 1.6) and in the legacy layout that pytorch-fid's 2019 release uses.
"""
import pickle
import zipfile

import numpy as np
import pytest

from score_sde.metrics import convert_inception as ci
from score_sde.io import torch_pickle
from tests.helpers import torch_save

# ---------------------------------------------------------------------------------------------------
# The published layout: torchvision Inception3 module names (aux_logits=False, 1008 classes) with the
# pytorch-fid blocks. Each BasicConv2d is (name, in_channels, out_channels, (kh, kw)).


def _inception_a(p, c_in, pool):
  return [(f"{p}.branch1x1", c_in, 64, (1, 1)), (f"{p}.branch5x5_1", c_in, 48, (1, 1)),
          (f"{p}.branch5x5_2", 48, 64, (5, 5)), (f"{p}.branch3x3dbl_1", c_in, 64, (1, 1)),
          (f"{p}.branch3x3dbl_2", 64, 96, (3, 3)), (f"{p}.branch3x3dbl_3", 96, 96, (3, 3)),
          (f"{p}.branch_pool", c_in, pool, (1, 1))]


def _inception_b(p, c_in):
  return [(f"{p}.branch3x3", c_in, 384, (3, 3)), (f"{p}.branch3x3dbl_1", c_in, 64, (1, 1)),
          (f"{p}.branch3x3dbl_2", 64, 96, (3, 3)), (f"{p}.branch3x3dbl_3", 96, 96, (3, 3))]


def _inception_c(p, c7):
  return [(f"{p}.branch1x1", 768, 192, (1, 1)), (f"{p}.branch7x7_1", 768, c7, (1, 1)),
          (f"{p}.branch7x7_2", c7, c7, (1, 7)), (f"{p}.branch7x7_3", c7, 192, (7, 1)),
          (f"{p}.branch7x7dbl_1", 768, c7, (1, 1)), (f"{p}.branch7x7dbl_2", c7, c7, (7, 1)),
          (f"{p}.branch7x7dbl_3", c7, c7, (1, 7)), (f"{p}.branch7x7dbl_4", c7, c7, (7, 1)),
          (f"{p}.branch7x7dbl_5", c7, 192, (1, 7)), (f"{p}.branch_pool", 768, 192, (1, 1))]


def _inception_d(p):
  return [(f"{p}.branch3x3_1", 768, 192, (1, 1)), (f"{p}.branch3x3_2", 192, 320, (3, 3)),
          (f"{p}.branch7x7x3_1", 768, 192, (1, 1)), (f"{p}.branch7x7x3_2", 192, 192, (1, 7)),
          (f"{p}.branch7x7x3_3", 192, 192, (7, 1)), (f"{p}.branch7x7x3_4", 192, 192, (3, 3))]


def _inception_e(p, c_in):
  return [(f"{p}.branch1x1", c_in, 320, (1, 1)), (f"{p}.branch3x3_1", c_in, 384, (1, 1)),
          (f"{p}.branch3x3_2a", 384, 384, (1, 3)), (f"{p}.branch3x3_2b", 384, 384, (3, 1)),
          (f"{p}.branch3x3dbl_1", c_in, 448, (1, 1)), (f"{p}.branch3x3dbl_2", 448, 384, (3, 3)),
          (f"{p}.branch3x3dbl_3a", 384, 384, (1, 3)), (f"{p}.branch3x3dbl_3b", 384, 384, (3, 1)),
          (f"{p}.branch_pool", c_in, 192, (1, 1))]


BASIC_CONVS = [
    ("Conv2d_1a_3x3", 3, 32, (3, 3)), ("Conv2d_2a_3x3", 32, 32, (3, 3)), ("Conv2d_2b_3x3", 32, 64, (3, 3)),
    ("Conv2d_3b_1x1", 64, 80, (1, 1)), ("Conv2d_4a_3x3", 80, 192, (3, 3)),
    *_inception_a("Mixed_5b", 192, 32), *_inception_a("Mixed_5c", 256, 64), *_inception_a("Mixed_5d", 288, 64),
    *_inception_b("Mixed_6a", 288),
    *_inception_c("Mixed_6b", 128), *_inception_c("Mixed_6c", 160), *_inception_c("Mixed_6d", 160),
    *_inception_c("Mixed_6e", 192),
    *_inception_d("Mixed_7a"), *_inception_e("Mixed_7b", 1280), *_inception_e("Mixed_7c", 2048),
]


def published_state_dict(seed=0, with_num_batches_tracked=True):
  rng = np.random.default_rng(seed)
  sd = {}
  for name, c_in, c_out, (kh, kw) in BASIC_CONVS:
    sd[f"{name}.conv.weight"] = rng.standard_normal((c_out, c_in, kh, kw), dtype=np.float32)
    sd[f"{name}.bn.weight"] = rng.standard_normal(c_out, dtype=np.float32)
    sd[f"{name}.bn.bias"] = rng.standard_normal(c_out, dtype=np.float32)
    sd[f"{name}.bn.running_mean"] = rng.standard_normal(c_out, dtype=np.float32)
    sd[f"{name}.bn.running_var"] = rng.uniform(0.5, 1.5, c_out).astype(np.float32)
    if with_num_batches_tracked:
      sd[f"{name}.bn.num_batches_tracked"] = np.array(0, np.int64)
  sd["fc.weight"] = rng.standard_normal((1008, 2048), dtype=np.float32)
  sd["fc.bias"] = rng.standard_normal(1008, dtype=np.float32)
  return sd


WRITERS = {"zip": torch_save.write_torch_zip, "legacy": torch_save.write_torch_legacy}


# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_reader_handles_offsets_strides_and_dtypes(tmp_path, fmt):
  shared = np.arange(12, dtype=np.float32)  # one storage, two tensors viewing it
  half = np.array([1.5, -2.25, 65504.0], np.float16)
  entries = [
      ("a", "FloatStorage", "s0", 12, 0, (3, 2), (2, 1)),
      ("a_t", "FloatStorage", "s0", 12, 1, (2, 3), (1, 4)),  # offset 1, transposed strides
      ("h", "HalfStorage", "s1", 3, 0, (3,), (1,)),
      ("n", "LongStorage", "s2", 1, 0, (), ()),
  ]
  storages = [("s0", shared), ("s1", half), ("s2", np.array([7], np.int64))]
  path = str(tmp_path / f"small.{fmt}")
  WRITERS[fmt](path, entries, storages)
  sd = torch_pickle.load_torch_state_dict(path)
  assert list(sd) == ["a", "a_t", "h", "n"]
  np.testing.assert_array_equal(sd["a"], shared[:6].reshape(3, 2))
  np.testing.assert_array_equal(sd["a_t"], np.array([[1, 5, 9], [2, 6, 10]], np.float32))
  assert sd["h"].dtype == np.float16 and np.array_equal(sd["h"], half)
  assert sd["n"].shape == () and int(sd["n"]) == 7


def test_reader_refuses_arbitrary_globals(tmp_path):
  path = tmp_path / "evil.pth"
  path.write_bytes(b"\x80\x02" + torch_save.pickle_global("os", "system") + b"X\x04\x00\x00\x00true\x85R.")
  with zipfile.ZipFile(tmp_path / "evil.zip", "w") as zf:
    zf.writestr("archive/data.pkl", path.read_bytes())
  with pytest.raises(pickle.UnpicklingError, match="os.system"):
    torch_pickle.load_torch_state_dict(str(tmp_path / "evil.zip"))
  with pytest.raises(ValueError, match="not a torch file|neither"):
    torch_pickle.load_torch_state_dict(str(path))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_published_layout_converts_to_linen_variables(tmp_path, fmt):
  sd = published_state_dict(seed=1)
  assert sum(v.size for k, v in sd.items() if not k.endswith(("running_mean", "running_var", "tracked"))) \
      == 23_850_960  # torchvision Inception3 without aux head: 23,834,568 + 8 * 2049 for 1008 classes
  path = str(tmp_path / f"{ci.INCEPTION_WEIGHTS_FILENAME}.{fmt}")
  WRITERS[fmt](path, *torch_save.contiguous_entries(sd))
  weights = ci.load_inception_weights(path, expected_sha256=None)
  assert weights.sha256 == ci.file_sha256(path) and weights.source == path
  params, stats = weights.variables["params"], weights.variables["batch_stats"]
  np.testing.assert_array_equal(params["Conv2d_1a_3x3"]["conv"]["kernel"],
                                sd["Conv2d_1a_3x3.conv.weight"].transpose(2, 3, 1, 0))
  k = params["Mixed_7b"]["branch3x3_2a"]["conv"]["kernel"]  # a 1x3 kernel: H and W must not swap
  assert k.shape == (1, 3, 384, 384)
  np.testing.assert_array_equal(k[0, 2, 5, 7], sd["Mixed_7b.branch3x3_2a.conv.weight"][7, 5, 0, 2])
  bn = "Mixed_6e.branch7x7dbl_5.bn"
  np.testing.assert_array_equal(params["Mixed_6e"]["branch7x7dbl_5"]["bn"]["scale"], sd[f"{bn}.weight"])
  np.testing.assert_array_equal(params["Mixed_6e"]["branch7x7dbl_5"]["bn"]["bias"], sd[f"{bn}.bias"])
  np.testing.assert_array_equal(stats["Mixed_6e"]["branch7x7dbl_5"]["bn"]["mean"], sd[f"{bn}.running_mean"])
  np.testing.assert_array_equal(stats["Mixed_6e"]["branch7x7dbl_5"]["bn"]["var"], sd[f"{bn}.running_var"])
  np.testing.assert_array_equal(params["fc"]["kernel"], sd["fc.weight"].T)
  np.testing.assert_array_equal(params["fc"]["bias"], sd["fc.bias"])


def test_conversion_rejects_wrong_layouts():
  sd = published_state_dict(seed=2, with_num_batches_tracked=False)
  ci.convert_state_dict(sd)  # num_batches_tracked is optional
  bad = dict(sd)
  bad["Mixed_5b.branch_pool.conv.weight"] = np.zeros((64, 192, 1, 1), np.float32)  # torchvision-like shape
  with pytest.raises(ValueError, match="Mixed_5b.branch_pool.conv.weight"):
    ci.convert_state_dict(bad)
  missing = {k: v for k, v in sd.items() if not k.startswith("Mixed_7c.branch_pool")}  # conv + 4 bn
  with pytest.raises(ValueError, match="lacks 5"):
    ci.convert_state_dict(missing)
  extra = dict(sd, **{"AuxLogits.fc.weight": np.zeros((1000, 768), np.float32)})
  with pytest.raises(ValueError, match="AuxLogits"):
    ci.convert_state_dict(extra)


def test_sha256_mismatch_is_an_error(tmp_path):
  path = tmp_path / ci.INCEPTION_WEIGHTS_FILENAME
  entries, storages = torch_save.contiguous_entries({"fc.bias": np.zeros(1008, np.float32)})
  torch_save.write_torch_zip(str(path), entries, storages)
  with pytest.raises(ValueError, match="SHA-256 mismatch") as err:
    ci.load_inception_weights(str(path))
  assert ci.INCEPTION_WEIGHTS_SHA256 in str(err.value) and ci.file_sha256(str(path)) in str(err.value)


def test_missing_file_error_names_file_url_flag_and_env(tmp_path, monkeypatch):
  monkeypatch.delenv(ci.INCEPTION_WEIGHTS_ENV, raising=False)
  for path in (None, str(tmp_path / "nowhere.pth")):
    with pytest.raises(FileNotFoundError) as err:
      ci.load_inception_weights(path)
    message = str(err.value)
    for needed in ("pt_inception-2015-12-05-6726825d.pth",
                   "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth",
                   "--inception_weights", "SCORE_SDE_INCEPTION_WEIGHTS", ci.INCEPTION_WEIGHTS_SHA256):
      assert needed in message
  monkeypatch.setenv(ci.INCEPTION_WEIGHTS_ENV, str(tmp_path / "from_env.pth"))
  with pytest.raises(FileNotFoundError, match="from_env.pth"):
    ci.load_inception_weights()


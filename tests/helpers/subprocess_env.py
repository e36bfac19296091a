"""The environment of a training subprocess started by a test: this checkout on the path, the CPU
backend with ``n_devices`` simulated devices, and the test compile flags that conftest.py put in
XLA_FLAGS (so the subprocess shares the suite's compilation cache entries)."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cpu_env(n_devices: int = 1) -> dict:
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n_devices}"
  return dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", XLA_FLAGS=flags.strip())

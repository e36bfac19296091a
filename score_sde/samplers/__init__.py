"""Samplers, likelihood and guided or constrained generation.

``SAMPLERS`` maps a sampler's name to ``sample(key, model, sde, shape, **options) -> (x, info)``:
``model`` is a score function ``score_fn(x [B, ...], t [B])`` or a ``parametrization.Denoiser``,
``shape`` is (batch, *sample_shape), every option is keyword-only, and ``info['nfe']`` is the
number of batched model evaluations as a Python int.
"""
from score_sde.samplers.adaptive_sde import sample_adaptive_sde
from score_sde.samplers.ald import sample_ald
from score_sde.samplers.consistency import sample_consistency
from score_sde.samplers.ddim import sample_ddim
from score_sde.samplers.dpm_solver import sample_dpm_solver
from score_sde.samplers.edm import sample_edm
from score_sde.samplers.flow import sample_flow
from score_sde.samplers.ode import sample_ode
from score_sde.samplers.pc import sample_pc

SAMPLERS = {
    "pc": sample_pc,
    "ald": sample_ald,
    "ode": sample_ode,
    "ddim": sample_ddim,
    "dpm_solver": sample_dpm_solver,
    "edm": sample_edm,
    "adaptive_sde": sample_adaptive_sde,
    "consistency": sample_consistency,
    "flow": sample_flow,
}

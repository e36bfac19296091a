"""Predictor-corrector samples under the VE SDE match a 2-D Gaussian mixture (exact scores)."""
import pytest

import sampler_checks
from score_sde.diffusion import sde as sde_lib

SDE = sde_lib.VESDE(sigma_min=0.01, sigma_max=10.0, N=sampler_checks.N_STEPS)


@pytest.mark.parametrize("predictor,corrector,snr,n_steps,probability_flow,num_steps",
                         sampler_checks.pc_configs(SDE))
def test_pc_sampler_matches_mixture(predictor, corrector, snr, n_steps, probability_flow, num_steps):
  sampler_checks.check_pc(SDE, predictor, corrector, snr, n_steps, probability_flow, num_steps)

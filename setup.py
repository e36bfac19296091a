"""Installs the score_sde library (score-based generative modelling with SDEs, in JAX)."""
from setuptools import find_packages, setup

setup(
    name="score_sde",
    version="0.1.0",
    description="Score-based generative modelling through SDEs (Song et al., ICLR 2021) in JAX/Flax.",
    python_requires=">=3.11",
    packages=find_packages(include=["score_sde", "score_sde.*"]),
    install_requires=[
        "jax>=0.5.0",
        "flax>=0.10.0",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11.0",
        "ml-collections>=1.0.0",
        "tensorflow-datasets>=4.9.7",
        "array-record>=0.5.0",
        "grain>=0.2.18",  # io/datasets.py: the input pipeline and its checkpointable state
        "numpy>=1.26",
        "scipy>=1.11",
        "diffrax>=0.6.0",
        "optimistix>=0.0.7",  # samplers/ode.py: the RMS error norm of diffrax's controllers
        "tqdm>=4.66",
        "tensorboardX>=2.6",
        "pillow>=10.0",
        "scikit-learn>=1.3",
        "absl-py>=2.0",
        "matplotlib>=3.7",
        "safetensors>=0.4",  # io/convert.py: diffusers .safetensors checkpoints (SD-VAE import)
    ],
    extras_require={
        "test": ["pytest>=8.0", "pytest-xdist>=3.5"],
        "torch": ["torch>=2.0"],
    },
    entry_points={"console_scripts": ["score-sde=score_sde.experiment.cli:main",
                                      "score-sde-convert=score_sde.experiment.convert_cli:convert_main"]},
)

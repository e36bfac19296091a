"""Variance-preserving SDE experiments (DDPM family)."""

"""Samplers, likelihood and guided or constrained generation."""

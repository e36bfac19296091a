"""Variance-exploding SDE experiments (SMLD / NCSN family)."""

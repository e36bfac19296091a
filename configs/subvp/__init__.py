"""sub-VP SDE experiments (Song et al., ICLR 2021): VP drift, variance bounded by the VP one."""

"""NCSN (Song & Ermon, 2019) and its ablations with the NCSNv2 techniques, VE, discrete."""

"""Reading runs together: transfer metrics, comparison against a baseline, seed statistics and result tables."""

"""deri_sweep/data."""

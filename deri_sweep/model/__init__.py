"""deri_sweep/model."""

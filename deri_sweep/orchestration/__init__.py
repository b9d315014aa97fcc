"""deri_sweep/orchestration."""

"""deri-sweep: run DERI ablations at cluster scale (Ray Train, Tune, Optuna)."""

__version__ = "0.1.0"

"""The training library: one DERI pretraining run, plain PyTorch (no Ray, no Optuna).

:mod:`~deri_sweep.train.train_config` is the run's config (data, model, optim);
:mod:`~deri_sweep.train.losses` the weighted DERI loss; :mod:`~deri_sweep.train.engine`
one training epoch and one evaluation (the step itself); :mod:`~deri_sweep.train.checkpoint`
what a run saves to continue exactly; :mod:`~deri_sweep.train.recipe` the whole run of one
worker (the only module that knows all of them), which Ray Train or ``python -m
deri_sweep.pretrain`` call.
"""

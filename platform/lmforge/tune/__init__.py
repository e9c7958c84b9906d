"""Hyperparameter sweeps (``lmforge tune``): pretrain or finetune trials on Ray Tune, with early stopping."""

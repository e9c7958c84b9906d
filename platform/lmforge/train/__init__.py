"""Training stage (``lmforge pretrain``): a plain PyTorch loop, run on Ray Train workers."""

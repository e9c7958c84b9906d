"""Data stage (``lmforge prepare``): corpus files -> documents ledger -> BPE tokenizer -> packed shards."""

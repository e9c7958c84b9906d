"""Fine-tuning stage (``lmforge finetune``): SFT on prompt/response or chat data, LoRA or full."""

"""Task data for fine-tuning and evaluation: built-in tasks over registry packages, and JSONL tasks."""

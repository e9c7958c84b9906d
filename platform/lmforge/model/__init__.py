"""Model definitions: Llama-style presets as Hugging Face configs, and loading/importing checkpoints."""

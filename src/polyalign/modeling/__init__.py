"""Models and tokenizers: creation from config, loading, the one prompt renderer, LoRA."""

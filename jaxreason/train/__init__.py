"""Training: configs, the Optax loop, LoRA and new token embeddings, checkpoints."""

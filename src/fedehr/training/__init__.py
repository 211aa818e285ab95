"""The one training loop (train_local) and run bundles (checkpoints: safetensors + TOML/JSON, no pickles)."""

"""Stage ② engine: admission, the batcher, the runner that owns the model, and the engine loop."""

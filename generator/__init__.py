"""nextframe generator: codec, block-causal DiT, KV cache, sampler, training."""

"""The chain's stages, one module each: decode, classify, store, failures."""

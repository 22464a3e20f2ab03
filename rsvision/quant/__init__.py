"""Low-bit quantizers plugged into any backbone (registered with ``register_quantizer``)."""

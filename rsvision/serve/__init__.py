"""Serving: one switchable network behind HTTP, the sub-network chosen per batch to meet a latency objective."""

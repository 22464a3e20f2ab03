"""Switchable networks: BatchNorm per sub-network, width-slimmable layers, module surgery,
materialization and BN folding, cost counting, and recomputed BN statistics."""

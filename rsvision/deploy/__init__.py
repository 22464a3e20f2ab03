"""Deployment: budgets, the plain network of a sub-network, ONNX export, choosing by budget, ``rsvision.load``."""

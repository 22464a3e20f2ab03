"""Data: multi-resolution transforms and the built-in datasets."""

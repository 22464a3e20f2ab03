"""Other projects' files: the official RS-Nets checkpoints as run folders."""

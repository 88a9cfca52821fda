"""The coordinator: ServerApp, checkpoints, central evaluation, ``survfed-server``."""

"""survfed's Flower apps: the ServerApp/ClientApp pair that ``flwr run`` submits.

The FAB submitted to the SuperLink carries only a ``pyproject.toml`` whose components
reference modules of the *installed* survfed package (see ``deploy/THREAT-MODEL.md``).
"""

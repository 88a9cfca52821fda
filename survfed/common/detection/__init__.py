"""Nodule detection (seed 003): the N-Net detector, its targets, loss, sampling, inference,
metrics and the leaky noisy-OR case classifier. Pure PyTorch/MONAI, no Flower.

Import from the submodules, e.g. ``from survfed.common.detection.config import cpu_preset`` or
``from survfed.common.detection.inference import detect``.
"""

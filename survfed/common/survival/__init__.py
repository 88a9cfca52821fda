"""Survival analysis: losses, site-local batching and metrics.

Import from the submodules, e.g. ``from survfed.common.survival.losses import cox_nll`` or
``from survfed.common.survival.batching import SiteStratifiedBatchSampler``.
"""

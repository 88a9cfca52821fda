"""Synthetic multi-site lung CT cohorts with known hazards (``survfed make-cohort``).

See ``docs/synthetic-cohorts.md`` for the phantom, the site profiles and the outcome formula.
"""

from survfed.common.synth.cohort import GENERATOR_VERSION, CohortSummary, SiteSummary, make_cohort
from survfed.common.synth.outcomes import OutcomeParams
from survfed.common.synth.presets import PRESETS, Preset, get_preset
from survfed.common.synth.sites import SiteProfile, parse_sites, site_profile

__all__ = [
    "GENERATOR_VERSION",
    "PRESETS",
    "CohortSummary",
    "OutcomeParams",
    "Preset",
    "SiteProfile",
    "SiteSummary",
    "get_preset",
    "make_cohort",
    "parse_sites",
    "site_profile",
]

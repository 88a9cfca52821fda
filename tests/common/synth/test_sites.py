"""Site profiles and the ``--sites`` parser."""

from __future__ import annotations

import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, RLELossless

from survfed.common.synth.sites import parse_sites, site_key, site_profile


def test_parse_sites_keeps_order_and_counts():
    assert parse_sites("iowa:40, maastro:60,stanford:26") == {
        "iowa": 40,
        "maastro": 60,
        "stanford": 26,
    }
    assert list(parse_sites("b:1,a:2")) == ["b", "a"]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("iowa", "'iowa' must look like NAME:COUNT"),
        ("iowa:0", "'0' in 'iowa:0' must be a positive integer"),
        ("iowa:x", "'x' in 'iowa:x'"),
        ("iowa:-3", "'-3'"),
        ("iowa:4,,maastro:3", "empty site entry"),
        ("io wa:4", "site name 'io wa'"),
        ("iowa:4,IOWA:5", "listed twice"),
        ("", "non-empty"),
    ],
)
def test_parse_sites_errors_name_the_bad_part(text, fragment):
    with pytest.raises(ValueError, match=None) as info:
        parse_sites(text)
    assert fragment in str(info.value)


def test_known_sites_differ_like_hospitals():
    iowa, maastro, stanford = (site_profile(n) for n in ("iowa", "maastro", "stanford"))
    assert iowa.transfer_syntax == ExplicitVRLittleEndian
    assert maastro.transfer_syntax == RLELossless
    assert stanford.transfer_syntax == JPEGLSLossless
    assert (iowa.pixel_representation, maastro.pixel_representation) == (1, 0)
    assert maastro.noise_sd_hu[0] > 2 * iowa.noise_sd_hu[1]  # low dose
    assert stanford.patient_position == "FFS" and iowa.patient_position == "HFS"
    assert stanford.slices_mm[0] < iowa.slices_mm[0] < maastro.slices_mm[0]
    assert stanford.cancer_rate < iowa.cancer_rate < maastro.cancer_rate
    assert len({iowa.layout, maastro.layout, stanford.layout}) == 3
    assert site_profile("Iowa").name == "Iowa" and site_profile("Iowa").id_prefix == "IOW"


def test_unknown_sites_are_derived_deterministically_from_the_name():
    a1, a2, b = site_profile("hospital_a"), site_profile("hospital_a"), site_profile("zz-9")
    assert a1 == a2
    assert a1 != b
    assert site_key("hospital_a") == site_key("hospital_a") != site_key("zz-9")
    profiles = [site_profile(f"s{k}") for k in range(20)]
    assert len({p.noise_sd_hu for p in profiles}) == 2  # standard and low dose both occur
    assert len({p.transfer_syntax for p in profiles}) >= 3
    for p in profiles:
        assert 0.3 <= p.cancer_rate <= 0.6
        assert p.follow_up_days > p.accrual_days


def test_bad_site_name_is_refused():
    with pytest.raises(ValueError, match="site name"):
        site_profile("../etc")

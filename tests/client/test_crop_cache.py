"""Tests for the per-site crop cache and the crop dataset."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from site_factory import BACKGROUND_HU, SPHERE_HU, make_site, sphere_center, write_csv

from survfed.client.catalogue import SiteCatalogue, catalogue_site
from survfed.client.crop_cache import CropDataset, build_crop_cache, params_fingerprint
from survfed.common.imaging.crops import extract_crops, window_hu
from survfed.common.survival.batching import SiteStratifiedBatchSampler
from survfed.common.survival.model import ModelConfig
from survfed.common.survival.train import LossConfig, predict, train_epoch

CONFIG = ModelConfig(encoder="small", k=3, crop_size=12, spacing_mm=1.0)
IDS = ("P1", "P2", "P3", "P4")
LEFT_8MM = np.array([8.0, 0.0, 0.0])


class CountingCatalogue(SiteCatalogue):
    """The real catalogue, recording which volumes are decoded."""

    def __init__(self, inner: SiteCatalogue) -> None:
        self.__dict__.update(inner.__dict__)
        self.loaded: list[str] = []

    def load_volume(self, patient_id: str):
        self.loaded.append(patient_id)
        return super().load_volume(patient_id)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = make_site(tmp_path / "hospital_a", IDS)
    # P1: two nodules, the smaller listed first; P3: annotated, no nodules; P4: not annotated
    write_csv(
        root / "clinical.csv",
        ["patient_id", "time_days", "event", "cancer", "nodules_annotated"],
        [["P1", 100, 1, 1, 1], ["P2", 200, 0, "", 1], ["P3", 300, 1, 0, 1], ["P4", 400, 0, 1, 0]],
    )
    c1, c2 = sphere_center(0), sphere_center(1)
    write_csv(
        root / "nodules.csv",
        ["patient_id", "x_mm", "y_mm", "z_mm", "diameter_mm"],
        [["P1", *(c1 + LEFT_8MM), 4.0], ["P1", *c1, 12.0], ["P2", *c2, 12.0]],
    )
    return root


def _data(ds: CropDataset) -> list[dict[str, torch.Tensor]]:
    return [ds[i] for i in range(len(ds))]


def test_build_content_exclusions_and_labels(site: Path, tmp_path: Path):
    cat = CountingCatalogue(catalogue_site(site))
    ds = build_crop_cache(cat, tmp_path / "cache", CONFIG, progress=False)
    assert ds.patient_ids == ["P1", "P2", "P3"]
    assert list(ds.excluded) == ["P4"] and "not annotated" in ds.excluded["P4"]
    assert sorted(cat.loaded) == ["P1", "P2", "P3"]
    assert (ds.n_built, ds.n_reused) == (3, 0)
    np.testing.assert_array_equal(ds.times, [100, 200, 300])
    np.testing.assert_array_equal(ds.events, [1, 0, 1])
    np.testing.assert_array_equal(ds.cancer, [1, np.nan, 0])
    assert ds.sites.tolist() == ["hospital_a"] * 3
    np.testing.assert_array_equal(ds.n_nodules, [2, 1, 0])

    item = ds[0]
    s = CONFIG.crop_size
    assert item["crops"].shape == (3, 1, s, s, s) and item["crops"].dtype == torch.float32
    assert item["present"].tolist() == [True, True, False]
    assert float(item["event"]) == 1.0 and float(item["time"]) == 100.0
    assert torch.isnan(ds[1]["cancer"])
    # largest first: crop 0 is centred on the 12 mm sphere (sphere HU in the middle)
    mid = s // 2
    sphere = window_hu(np.array(SPHERE_HU))
    assert float(item["crops"][0, 0, mid, mid, mid]) == pytest.approx(sphere, abs=1e-3)
    # crop 1 is the (unlabelled) 4 mm spot 8 mm to the left: background there
    background = window_hu(np.array(BACKGROUND_HU))
    assert float(item["crops"][1, 0, mid, mid, mid]) == pytest.approx(background, abs=1e-3)
    assert not item["crops"][2].any()
    # P3 annotated with zero nodules: kept, all blank
    assert not ds[2]["present"].any() and not ds[2]["crops"].any()

    # the cached crops equal a direct extraction (up to float16 storage)
    volume = catalogue_site(site).load_volume("P1")
    direct, present = extract_crops(
        volume, np.array([sphere_center(0), sphere_center(0) + LEFT_8MM]), **CONFIG.crop_kwargs()
    )
    np.testing.assert_allclose(item["crops"].numpy(), direct, atol=5e-4)
    np.testing.assert_array_equal(item["present"].numpy(), present)


def test_second_build_reads_no_dicom(site: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    cat = CountingCatalogue(catalogue_site(site))
    first = _data(build_crop_cache(cat, cache, CONFIG, progress=False))
    # destroy every DICOM file's content but keep its size and mtime: a re-read would fail
    for path in (site / "dicom").rglob("*"):
        if path.is_file():
            st = path.stat()
            path.write_bytes(b"\0" * st.st_size)
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    cat.loaded.clear()
    ds = build_crop_cache(cat, cache, CONFIG, progress=False, in_memory=True)
    assert cat.loaded == []
    assert (ds.n_built, ds.n_reused) == (0, 3)
    second = _data(ds)
    for a, b in zip(first, second, strict=True):
        for key in a:
            torch.testing.assert_close(a[key], b[key], equal_nan=True, rtol=0, atol=0)


def test_invalidation(site: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    cat = CountingCatalogue(catalogue_site(site))
    build_crop_cache(cat, cache, CONFIG, progress=False)
    # a preprocessing parameter change: a new folder, every patient rebuilt
    other = ModelConfig(encoder="small", k=3, crop_size=12, spacing_mm=1.5)
    assert params_fingerprint(other) != params_fingerprint(CONFIG)
    # the encoder is not a preprocessing parameter
    assert params_fingerprint(ModelConfig(encoder="resnet18", k=3, crop_size=12)) == (
        params_fingerprint(CONFIG)
    )
    cat.loaded.clear()
    ds_other = build_crop_cache(cat, cache, other, progress=False)
    assert sorted(cat.loaded) == ["P1", "P2", "P3"] and ds_other.n_built == 3
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [params_fingerprint(CONFIG), params_fingerprint(other)]
    )
    # a touched series file: only that patient rebuilt, its stale file removed
    one_file = cat.patients["P2"].files[0]
    st = one_file.stat()
    os.utime(one_file, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    cat.loaded.clear()
    ds = build_crop_cache(cat, cache, CONFIG, progress=False)
    assert cat.loaded == ["P2"] and (ds.n_built, ds.n_reused) == (1, 2)
    folder = cache / params_fingerprint(CONFIG)
    assert len(list(folder.glob("P2.*.npz"))) == 1
    assert len(list(folder.glob("*.npz"))) == 3
    # edited nodules (a re-catalogued site): only the changed patient rebuilt
    with (site / "nodules.csv").open("a") as fh:
        fh.write("P3,{},{},{},6.0\n".format(*sphere_center(2)))
    cat2 = CountingCatalogue(catalogue_site(site))
    ds = build_crop_cache(cat2, cache, CONFIG, progress=False)
    assert cat2.loaded == ["P3"]
    assert ds[2]["present"].tolist() == [True, False, False]
    # a damaged cache file is rebuilt, not trusted
    victim = next(folder.glob("P1.*.npz"))
    victim.write_bytes(b"garbage")
    cat2.loaded.clear()
    build_crop_cache(cat2, cache, CONFIG, progress=False)
    assert cat2.loaded == ["P1"]


def test_dataset_feeds_the_sampler_and_pools_sites(site: Path, tmp_path: Path):
    ds_a = build_crop_cache(catalogue_site(site), tmp_path / "cache", CONFIG, progress=False)
    root_b = make_site(tmp_path / "hospital_b", ("Q1", "Q2"))
    ds_b = build_crop_cache(catalogue_site(root_b), tmp_path / "cache", CONFIG, progress=False)
    assert ds_b.excluded == {} and len(ds_b) == 2  # no nodules_annotated column: all annotated
    pooled = CropDataset.concat([ds_a, ds_b])
    assert len(pooled) == 5 and pooled.site_names == ("hospital_a", "hospital_b")
    assert [int(pooled[i]["site"]) for i in range(5)] == [0, 0, 0, 1, 1]
    assert list(pooled.excluded) == ["hospital_a/P4"]
    sampler = SiteStratifiedBatchSampler(pooled.sites, pooled.events, batch_size=2, seed=0)
    for batch in sampler:
        assert len({pooled.sites[i] for i in batch}) == 1
    # the dataset is what the trainer consumes
    torch.manual_seed(0)
    model = CONFIG.build_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    stats = train_epoch(model, pooled, sampler, opt, LossConfig(), device="cpu")
    assert stats["n_patients"] == sum(len(b) for b in sampler) and np.isfinite(stats["loss"])
    g = predict(model, pooled, device="cpu", batch_size=2)
    assert g.shape == (5,) and np.isfinite(g).all()
    crops, present = pooled.arrays()
    assert crops.shape == (5, 3, 1, 12, 12, 12) and present.sum() == 3 + 2
    with pytest.raises(ValueError, match="share"):
        CropDataset.concat([ds_a, ds_a])


def test_argument_and_file_errors(site: Path, tmp_path: Path):
    cat = catalogue_site(site)
    with pytest.raises(TypeError, match="config"):
        build_crop_cache(cat, tmp_path / "c", {"k": 3}, progress=False)
    with pytest.raises(TypeError, match="catalogue"):
        build_crop_cache(site, tmp_path / "c", CONFIG, progress=False)
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    with pytest.raises(OSError, match="cache_dir"):
        build_crop_cache(cat, blocker, CONFIG, progress=False)
    ds = build_crop_cache(cat, tmp_path / "c", CONFIG, progress=False)
    ds.records[0].path.unlink()
    with pytest.raises(FileNotFoundError, match="P1"):
        ds[0]
    with pytest.raises(IndexError):
        ds[3]
    # a series file gone since cataloguing: that patient is left out with the reason
    cat.patients["P2"].files[3].unlink()
    ds = build_crop_cache(cat, tmp_path / "c", CONFIG, progress=False)
    assert ds.patient_ids == ["P1", "P3"]
    assert "changed since the site was catalogued" in ds.excluded["P2"]

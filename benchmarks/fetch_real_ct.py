"""Fetch two real chest CT scans (with a lesion label each) from a package on PyPI.

survfed ships no patient data, and nothing is downloaded at run time. The test suite and the
preprocessing benchmark still need real chest CT next to the generator's phantoms: the
pipeline's thresholds are the paper's, made for real scanners. PyRadiomics' source
distribution (BSD-3-Clause, https://github.com/AIM-Harvard/pyradiomics) carries two chest CT
test cases, ``lung1`` and ``lung2`` (512 × 512, 5 mm slices, one lung lesion labelled in each),
as NRRD files. This script downloads that archive from PyPI (a package registry, reachable
wherever ``pip install`` works), checks its SHA-256, and extracts only these four files:

    DIR/lung1_image.nrrd  DIR/lung1_label.nrrd  DIR/lung2_image.nrrd  DIR/lung2_label.nrrd

Each file is checked against its own SHA-256 too, so a second run with the files in place does
nothing. Fetching needs the standard library only; :func:`write_site` (used by the tests and
``benchmarks/preprocess.py --real-ct``) writes the two scans as a survfed site of DICOM files.

    python benchmarks/fetch_real_ct.py [--out .cache/real-ct] [--site SITE_DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

ARCHIVE_URL = (
    "https://files.pythonhosted.org/packages/03/c1/"
    "20fc2c50ab1e3304da36d866042a1905a2b05a1431ece35448ab6b4578f2/pyradiomics-3.1.0.tar.gz"
)
ARCHIVE_SHA256 = "24722c962a6bbd09bc39c1c67dbffe92435f9692a421fabaae8a6b4511eb48e4"
MEMBER_PREFIX = "pyradiomics-3.1.0/data/"
FILES = {
    "lung1_image.nrrd": "379fa48bf34cfa961e6f5ec19c0c38757a30b9aa884212ef28dc29b5061c64ed",
    "lung1_label.nrrd": "e9d9a88054d7bc1d3034193ff907ce6b8c6ba28a7bc3a16f23728982d1b6b50a",
    "lung2_image.nrrd": "aa2b94eec79127ed786798ac8dc3c013010e1692d5787bebfae1a1e9685a4651",
    "lung2_label.nrrd": "cef52738dc51aab69a48fe30639da956d2b911b1c2920439c091fab84727657a",
}
DEFAULT_OUT = Path(__file__).resolve().parents[1] / ".cache" / "real-ct"
# case → (patient ID, transfer syntax of its series: one uncompressed, one JPEG-LS lossless)
CASES = {"lung1": ("REAL-1", "1.2.840.10008.1.2.1"), "lung2": ("REAL-2", "1.2.840.10008.1.2.4.80")}
_ATTEMPTS = 3


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def missing(out: Path) -> list[str]:
    """Names of the four files that are absent from ``out`` or differ from their checksum."""
    return [n for n, sha in FILES.items() if not (out / n).is_file() or _sha256(out / n) != sha]


def _download(url: str, dest: Path) -> None:
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as fh:
                while block := response.read(1 << 20):
                    fh.write(block)
            return
        except OSError as exc:
            if attempt == _ATTEMPTS:
                raise OSError(f"could not download {url}: {exc}") from exc
            print(f"download failed ({exc}); trying again", file=sys.stderr)
            time.sleep(2.0 * attempt)


def fetch(out: Path) -> list[Path]:
    """Make sure the four files are in ``out``; download and extract them if not.

    Raises:
        OSError: the download failed, or a file does not match its checksum.
    """
    out.mkdir(parents=True, exist_ok=True)
    todo = missing(out)
    if todo:
        with tempfile.TemporaryDirectory(dir=out) as tmp:
            archive = Path(tmp) / "pyradiomics.tar.gz"
            _download(ARCHIVE_URL, archive)
            if (got := _sha256(archive)) != ARCHIVE_SHA256:
                raise OSError(f"{ARCHIVE_URL}: SHA-256 {got}, expected {ARCHIVE_SHA256}")
            with tarfile.open(archive, "r:gz") as tar:
                for name in todo:
                    member = tar.extractfile(MEMBER_PREFIX + name)
                    if member is None:
                        raise OSError(f"{ARCHIVE_URL} has no file {MEMBER_PREFIX + name}")
                    part = Path(tmp) / name
                    part.write_bytes(member.read())
                    if (got := _sha256(part)) != FILES[name]:
                        raise OSError(f"{name}: SHA-256 {got}, expected {FILES[name]}")
                    part.replace(out / name)
    return [out / n for n in FILES]


def write_site(data_dir: Path, site: Path) -> dict[str, Path]:
    """Write the scans of ``data_dir`` as a survfed site: ``dicom/<patient>/``, ``clinical.csv``,
    ``nodules.csv``.

    Each scan becomes a CT Image Storage series written by survfed's DICOM writer (the HU are
    the NRRD's, unchanged); ``clinical.csv`` gives each patient a made-up follow-up;
    ``nodules.csv`` holds each scan's labelled lesion: the centre of its voxels (patient mm) and
    the diameter of the sphere of the same volume.

    Returns:
        Patient ID → the lesion label file of that patient's scan.
    """
    import numpy as np
    import SimpleITK as sitk
    from pydicom.uid import generate_uid

    from survfed.common.imaging.dicom_write import PixelEncoding, SeriesMeta, write_ct_series
    from survfed.common.imaging.volume import Volume

    uids = ("study_instance_uid", "series_instance_uid", "frame_of_reference_uid")
    labels = {}
    lesions = ["patient_id,x_mm,y_mm,z_mm,diameter_mm"]
    for case, (patient_id, syntax) in CASES.items():
        image = sitk.ReadImage(str(data_dir / f"{case}_image.nrrd"))
        meta = SeriesMeta(
            patient_id=patient_id,
            study_date="20240101",
            **{name: generate_uid(entropy_srcs=[case, name]) for name in uids},
        )
        encoding = PixelEncoding(transfer_syntax_uid=syntax)
        write_ct_series(Volume.from_sitk(image), site / "dicom" / patient_id, meta, encoding)
        labels[patient_id] = data_dir / f"{case}_label.nrrd"
        label = Volume.from_sitk(sitk.ReadImage(str(labels[patient_id])))
        voxels = np.argwhere(label.array > 0).astype(np.float64)
        x, y, z = label.voxel_to_patient(voxels).mean(axis=0)
        diameter = (6.0 * len(voxels) * float(np.prod(label.spacing)) / np.pi) ** (1.0 / 3.0)
        lesions.append(f"{patient_id},{x:.2f},{y:.2f},{z:.2f},{diameter:.2f}")
    rows = [f"{pid},{400 * (n + 1)},{n % 2}" for n, pid in enumerate(labels)]
    (site / "clinical.csv").write_text("\n".join(["patient_id,time_days,event", *rows, ""]))
    (site / "nodules.csv").write_text("\n".join([*lesions, ""]))
    return labels


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")
    parser.add_argument(
        "--site", type=Path, default=None, help="also write them as a survfed site there"
    )
    args = parser.parse_args()
    try:
        paths = fetch(args.out)
    except OSError as exc:
        print(f"fetch_real_ct: {exc}", file=sys.stderr)
        return 1
    print(f"real chest CT: {len(paths)} files in {args.out}")
    if args.site is not None:
        write_site(args.out, args.site)
        print(f"written as a site: {args.site}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

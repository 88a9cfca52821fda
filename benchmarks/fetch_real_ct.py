"""Fetch real CT scans (three chest scans, one scanner's DICOM slab) from packages on PyPI.

survfed ships no patient data, and nothing is downloaded at run time. The test suite and the
preprocessing benchmark still need real CT next to the generator's phantoms: the pipeline's
thresholds are the paper's, made for real scanners. Two packages' source distributions carry
real scans as test data; this script downloads them from PyPI (a package registry, reachable
wherever ``pip install`` works), checks each archive's SHA-256, and extracts only these:

* PyRadiomics 3.1.0 (BSD-3-Clause, https://github.com/AIM-Harvard/pyradiomics): chest CT test
  cases ``lung1`` and ``lung2`` (512 × 512, 5 mm slices, one lung lesion labelled in each), as
  ``DIR/lung{1,2}_{image,label}.nrrd``;
* TotalSegmentator 2.18.0 (Apache-2.0, https://github.com/wasserth/TotalSegmentator): a
  contrast-enhanced chest-abdomen CT angiography resampled to 1.5 mm isotropic voxels (its
  aorta-report example), as ``DIR/cta_image.nii.gz``; and 20 slices of an upper-abdomen CT
  straight from a Siemens Biograph mCT PET/CT scanner (JPEG 2000 lossless, 512 × 512, 2 mm,
  de-identified by blanking its UIDs and PatientID), as ``DIR/siemens_abdomen/``.

Each extracted file (or folder) is checked against its own SHA-256 too, so a second run with
the files in place does nothing. Fetching needs the standard library only; :func:`write_site`
(used by the tests and ``benchmarks/preprocess.py --real-ct``) writes the three chest scans as
a survfed site of DICOM files.

    python benchmarks/fetch_real_ct.py [--out .cache/real-ct] [--site SITE_DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import NamedTuple


class Source(NamedTuple):
    """One source archive on PyPI and what to take from it.

    Attributes:
        url: the archive's address.
        sha256: the archive's SHA-256.
        files: local name → (path inside the archive, SHA-256). A name ending in ``/`` is a
            folder: every file under that archive path, and the digest of :func:`_digest`.
    """

    url: str
    sha256: str
    files: dict[str, tuple[str, str]]


_PYRADIOMICS = "pyradiomics-3.1.0/data/"
_TOTALSEG = "totalsegmentator-2.18.0/tests/reference_files/"
SOURCES = (
    Source(
        "https://files.pythonhosted.org/packages/03/c1/"
        "20fc2c50ab1e3304da36d866042a1905a2b05a1431ece35448ab6b4578f2/pyradiomics-3.1.0.tar.gz",
        "24722c962a6bbd09bc39c1c67dbffe92435f9692a421fabaae8a6b4511eb48e4",
        {
            "lung1_image.nrrd": (
                _PYRADIOMICS + "lung1_image.nrrd",
                "379fa48bf34cfa961e6f5ec19c0c38757a30b9aa884212ef28dc29b5061c64ed",
            ),
            "lung1_label.nrrd": (
                _PYRADIOMICS + "lung1_label.nrrd",
                "e9d9a88054d7bc1d3034193ff907ce6b8c6ba28a7bc3a16f23728982d1b6b50a",
            ),
            "lung2_image.nrrd": (
                _PYRADIOMICS + "lung2_image.nrrd",
                "aa2b94eec79127ed786798ac8dc3c013010e1692d5787bebfae1a1e9685a4651",
            ),
            "lung2_label.nrrd": (
                _PYRADIOMICS + "lung2_label.nrrd",
                "cef52738dc51aab69a48fe30639da956d2b911b1c2920439c091fab84727657a",
            ),
        },
    ),
    Source(
        "https://files.pythonhosted.org/packages/c3/53/"
        "7d654d2ec3fcb801ae54d318b0ffc18021aed528bf4e4df0753caf0c8a73/"
        "totalsegmentator-2.18.0.tar.gz",
        "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03",
        {
            "cta_image.nii.gz": (
                _TOTALSEG + "aorta_report/example_ct.nii.gz",
                "372d98723e3283a8d4a0ae2f0ef1e581c0ad17b673b30b2e8d3e215180cc2a12",
            ),
            "siemens_abdomen/": (
                _TOTALSEG + "example_ct_dicom/",
                "24a101a9bcae2537e36ed8dfa5518e815bc370b9cd8ba4651c32b6772162d926",
            ),
        },
    ),
)
FILES = {name: sha for source in SOURCES for name, (_, sha) in source.files.items()}
DEFAULT_OUT = Path(__file__).resolve().parents[1] / ".cache" / "real-ct"
# case → (patient ID, source file, transfer syntax of its series)
CASES = {
    "lung1": ("REAL-1", "lung1_image.nrrd", "1.2.840.10008.1.2.1"),  # uncompressed
    "lung2": ("REAL-2", "lung2_image.nrrd", "1.2.840.10008.1.2.4.80"),  # JPEG-LS lossless
    "cta": ("REAL-3", "cta_image.nii.gz", "1.2.840.10008.1.2.5"),  # RLE lossless
}
_ATTEMPTS = 3


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _digest(path: Path) -> str:
    """SHA-256 of a file; of a folder, SHA-256 of its ``"<name> <file SHA-256>\\n"`` lines,
    sorted by name."""
    if path.is_dir():
        lines = "".join(f"{p.name} {_sha256(p)}\n" for p in sorted(path.iterdir()))
        return hashlib.sha256(lines.encode()).hexdigest()
    return _sha256(path)


def missing(out: Path) -> list[str]:
    """Names of the files (and folders) absent from ``out`` or differing from their checksum."""
    return [n for n, sha in FILES.items() if not (out / n).exists() or _digest(out / n) != sha]


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


def _extract(tar: tarfile.TarFile, member: str, dest: Path, url: str) -> None:
    """Write archive path ``member`` (a folder when it ends in ``/``) to ``dest``."""
    members = [member]
    if member.endswith("/"):
        dest.mkdir()
        members = [m.name for m in tar.getmembers() if m.isfile() and m.name.startswith(member)]
    if not members:
        raise OSError(f"{url} has no folder {member}")
    for name in members:
        try:
            data = tar.extractfile(name)
        except KeyError:
            data = None
        if data is None:
            raise OSError(f"{url} has no file {name}")
        target = dest / name[len(member) :] if member.endswith("/") else dest
        target.write_bytes(data.read())


def fetch(out: Path) -> list[Path]:
    """Make sure the files are in ``out``; download and extract the ones that are not.

    Raises:
        OSError: a download failed, or a file does not match its checksum.
    """
    out.mkdir(parents=True, exist_ok=True)
    todo = set(missing(out))
    for source in SOURCES:
        names = [n for n in source.files if n in todo]
        if not names:
            continue
        with tempfile.TemporaryDirectory(dir=out) as tmp:
            archive = Path(tmp) / "archive.tar.gz"
            _download(source.url, archive)
            if (got := _sha256(archive)) != source.sha256:
                raise OSError(f"{source.url}: SHA-256 {got}, expected {source.sha256}")
            with tarfile.open(archive, "r:gz") as tar:
                for name in names:
                    member, sha = source.files[name]
                    part = Path(tmp) / name.rstrip("/")
                    _extract(tar, member, part, source.url)
                    if (got := _digest(part)) != sha:
                        raise OSError(f"{name}: SHA-256 {got}, expected {sha}")
                    if (out / name).is_dir():
                        shutil.rmtree(out / name)
                    part.replace(out / name.rstrip("/"))
    return [out / n.rstrip("/") for n in FILES]


def write_site(data_dir: Path, site: Path) -> dict[str, Path]:
    """Write the chest scans of ``data_dir`` as a survfed site: ``dicom/<patient>/``,
    ``clinical.csv``, ``nodules.csv``.

    Each scan becomes a CT Image Storage series written by survfed's DICOM writer (the HU are
    the source file's, unchanged); ``clinical.csv`` gives each patient a made-up follow-up;
    ``nodules.csv`` holds the labelled lesion of ``lung1`` and ``lung2``: the centre of its
    voxels (patient mm) and the diameter of the sphere of the same volume (``cta`` has no
    lesion label, so ``clinical.csv`` marks it ``nodules_annotated`` 0).

    Returns:
        Patient ID → the lesion label file of that patient's scan, for the labelled ones.
    """
    import numpy as np
    import SimpleITK as sitk
    from pydicom.uid import generate_uid

    from survfed.common.imaging.dicom_write import PixelEncoding, SeriesMeta, write_ct_series
    from survfed.common.imaging.volume import Volume

    uids = ("study_instance_uid", "series_instance_uid", "frame_of_reference_uid")
    labels = {}
    lesions = ["patient_id,x_mm,y_mm,z_mm,diameter_mm"]
    for case, (patient_id, source, syntax) in CASES.items():
        image = sitk.ReadImage(str(data_dir / source))
        meta = SeriesMeta(
            patient_id=patient_id,
            study_date="20240101",
            **{name: generate_uid(entropy_srcs=[case, name]) for name in uids},
        )
        encoding = PixelEncoding(transfer_syntax_uid=syntax)
        write_ct_series(Volume.from_sitk(image), site / "dicom" / patient_id, meta, encoding)
        label_path = data_dir / f"{case}_label.nrrd"
        if label_path.name not in FILES:
            continue
        labels[patient_id] = label_path
        label = Volume.from_sitk(sitk.ReadImage(str(label_path)))
        voxels = np.argwhere(label.array > 0).astype(np.float64)
        x, y, z = label.voxel_to_patient(voxels).mean(axis=0)
        diameter = (6.0 * len(voxels) * float(np.prod(label.spacing)) / np.pi) ** (1.0 / 3.0)
        lesions.append(f"{patient_id},{x:.2f},{y:.2f},{z:.2f},{diameter:.2f}")
    rows = [
        f"{pid},{400 * (n + 1)},{n % 2},{int(pid in labels)}"
        for n, (pid, _, _) in enumerate(CASES.values())
    ]
    header = "patient_id,time_days,event,nodules_annotated"
    (site / "clinical.csv").write_text("\n".join([header, *rows, ""]))
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
    print(f"real CT: {len(paths)} files and folders in {args.out}")
    if args.site is not None:
        write_site(args.out, args.site)
        print(f"written as a site: {args.site}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

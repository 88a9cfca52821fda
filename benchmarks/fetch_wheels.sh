#!/usr/bin/env bash
# Download, on a machine with internet, the wheels benchmarks/gpu_check.sh needs on an offline
# GPU machine whose Python already holds torch (CUDA), NumPy, SciPy, scikit-image and pytest:
# SimpleITK, pydicom, pyjpegls (JPEG-LS, for the stanford-profile scans) and MONAI, about 60 MB.
#
#   bash benchmarks/fetch_wheels.sh [DEST] [PYTHON_VERSION]      (default: .whl 3.12)
#
# The versions are the ones the test suite runs with; --no-deps, so nothing else comes along.
set -euo pipefail

case "${1:-}" in
-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
-*) echo "fetch_wheels.sh: unknown option $1 (usage: [DEST] [PYTHON_VERSION])" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
DEST=${1:-.whl}
PYVER=${2:-3.12}
PACKAGES=(simpleitk==2.5.7 pydicom==3.0.2 pyjpegls==1.5.1 monai==1.6.1)
mkdir -p "$DEST"
python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$DEST" "${PACKAGES[@]}"
ls -l "$DEST"
du -sh "$DEST"

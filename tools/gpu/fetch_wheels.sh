#!/usr/bin/env bash
# Wheels the GPU machine lacks (it has no package index): nibabel and isal for its Python 3.12,
# into .whl/ (git-ignored through .git/info/exclude), which `gpu_check.sh` installs from.
#   bash tools/gpu/fetch_wheels.sh    (from the repository root) then carry .whl with the device call
set -euo pipefail
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl nibabel==5.4.2 isal==1.9.1
ls .whl

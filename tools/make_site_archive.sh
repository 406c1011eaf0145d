#!/usr/bin/env bash
# Pack Python packages for the GPU machine (Python 3.12, x86-64, no network) into one xz archive
# of an unpacked site-packages folder: .whl/NAME-site.tar.xz. tools/gpu_check.sh unpacks every
# such archive it finds into /tmp/site, drops the packages that machine already has (so its
# torch keeps its own dependencies), and puts /tmp/site on PYTHONPATH.
#
# Why not the wheels themselves: the device call carries at most 64 MiB with the checkout
# (about 26 MB); PyAV's wheel and Ray's (80 MB) with its dependencies do not fit beside it.
# Unpacked, trimmed (DROP: subpackages never imported here) and xz-compressed: PyAV 24 MB,
# Ray 28 MB, each in a call of its own (/tmp/site stays while the machine is warm).
#
# Usage: bash tools/make_site_archive.sh NAME==VERSION [DROP_PATH ...]
#   bash tools/make_site_archive.sh av==18.1.0
#   bash tools/make_site_archive.sh ray==2.60.0 ray/jars ray/rllib ray/tune ray/train ray/serve \
#       ray/llm ray/data
set -euo pipefail
spec="$1"; shift
name="${spec%%=*}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$work/wheels" "$spec"
mkdir "$work/site"
for wheel in "$work"/wheels/*.whl; do
    python3 -m zipfile -e "$wheel" "$work/site/"
done
for drop in "$@"; do
    rm -rf "${work:?}/site/$drop"
done
# zipfile drops the executable bits: shared libraries and the programs packages ship (Ray's
# raylet and gcs_server) need them back.
find "$work/site" -type f \( -name "*.so*" -o -path "*/bin/*" -o -path "*/core/src/*" \) \
    -exec chmod +x {} +
mkdir -p .whl
tar -C "$work/site" -cf - . | xz -9 -T0 > ".whl/$name-site.tar.xz"
ls -l ".whl/$name-site.tar.xz"

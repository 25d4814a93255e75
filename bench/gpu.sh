#!/usr/bin/env bash
# filter and encode with --decode cpu and --decode device at fp16 and bf16, and train's step, on
# the GPU: images/s, the ratio to the model-only bound, peak GPU memory. Under 5 minutes.
#   bash bench/gpu.sh            # ViT-B-32 (random weights), 224 px, real-size JPEGs
#   bash bench/gpu.sh --dry      # tiny sizes on whatever device there is (CI runs this)
# Without a GPU it says "no GPU" and runs on the CPU.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "${PYTHON:-python3}" "$here/gpu.py" "$@"

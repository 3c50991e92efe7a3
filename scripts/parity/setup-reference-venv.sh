#!/usr/bin/env bash
# Create the reference venv for the parity harness (see scripts/parity/README.md).
#
#   scripts/parity/setup-reference-venv.sh [--venv DIR] [REFDIR...]
#
# DIR defaults to /work/scratch/refvenv. Each REFDIR (a reference checkout: official
# Step1X-Edit or a Peyton-Chen/diffusers branch) is import-checked with the new venv at the end.
# The diffusers branches are not pip-installed: both are 0.36.0.dev0 with the same dependencies,
# so the venv holds those dependencies and the runner puts the checkout given on the command line
# first on sys.path (one venv serves both branches, and the code that runs is the checkout named).
set -euo pipefail

venv=/work/scratch/refvenv
refdirs=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --venv) venv="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) refdirs+=("$1"); shift ;;
  esac
done

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python=${PYTHON:-python3.11}

if [[ ! -x "$venv/bin/python" ]]; then
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --quiet)

# torch: a CUDA build that runs on the CPU; the CPU-only torch wheel of this machine cannot import
# PyPI's torchvision, which the official code needs (torchvision.transforms.functional).
"${pip[@]}" torch==2.14.1 torchvision==0.29.1
# transformers 4.x: the diffusers fork calls get_rope_index(input_ids, image_grid_thw, None,
# None, attention_mask), the 4.x signature; 4.55.0 is the version the official v1.1 requirements
# name for the diffusers pipelines. qwen_vl_utils as pinned by the official requirements.
# Pillow as in stepedit's venv, so both sides resize with the same library.
pillow=$("$here/../../.venv/bin/python" -c 'import PIL; print(PIL.__version__)' 2>/dev/null || echo 11.1.0)
"${pip[@]}" \
  transformers==4.55.0 "qwen-vl-utils==0.0.10" "Pillow==$pillow" \
  einops safetensors numpy \
  "huggingface-hub>=0.34.0,<1.0" importlib_metadata filelock "httpx<1.0.0" regex requests \
  megfile
# peft for the diffusers targets' `lora` check (their transformer's load_lora_adapter); 0.17 is
# the fork's minimum (setup.py: peft>=0.17.0). It brings accelerate.
"${pip[@]}" peft==0.17.1
# Not installed: xfuser (multi-GPU only) and liger_kernel (a Triton GPU kernel whose import fails
# on a machine without a GPU); reference_patches.py stubs both imports (see the README).

for dir in "${refdirs[@]}"; do
  "$venv/bin/python" "$here/reference_runner.py" check-import "$dir"
done
echo "reference venv ready: $venv"

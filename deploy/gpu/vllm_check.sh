#!/usr/bin/env bash
# On a lent GPU machine: deploy/gpu/vllm_check.sh PART_DIR CONFIG_DIR OUT_DIR. Keeps the part in
# PART_DIR (one of deploy/gpu/vllm_bundle.sh's call-N folders); once every part in the manifest
# is there, checks them, unpacks vLLM and runs check.py's vllm_refine (with TRITON_ATTN if the
# default attention backend fails). Run it once per part, each call while the machine is warm.
set -uo pipefail
parts=/tmp/vllm-parts site=/tmp/vllm-site
part_dir=$1 config=$2 out=$3
mkdir -p "$parts" "$out"
cp "$part_dir"/part_* "$part_dir"/MANIFEST "$parts"/
if ! (cd "$parts" && sha256sum --quiet -c MANIFEST >/dev/null 2>&1); then
  echo "have $(ls "$parts" | grep -c part_) of $(wc -l < "$parts/MANIFEST") parts"
  exit 0
fi
if [ ! -d "$site/vllm" ]; then
  mkdir -p "$site" && cat "$parts"/part_* | xz -T0 -dc | tar -C "$site" -xf - || exit 1
fi
export PYTHONPATH=$site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 \
  DO_NOT_TRACK=1 PYTHONUNBUFFERED=1
here=$(dirname "$0")
python3 -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
timeout "${VLLM_CHECK_TIMEOUT:-400}" python3 "$here/check.py" "$config" "$out/gpu.json" vllm_refine \
  > "$out/log.txt" 2>&1
echo "check exited $?"
grep -v -E 'it/s\]|^\s*$' "$out/log.txt" | tail -40
if ! grep -q '"vllm_large"' "$out/gpu.json" 2>/dev/null; then
  echo "=== again with TRITON_ATTN"
  GPU_CHECK_VLLM_ATTENTION=TRITON_ATTN timeout "${VLLM_RETRY_TIMEOUT:-150}" python3 \
    "$here/check.py" "$config" "$out/gpu_triton.json" vllm_refine > "$out/log_triton.txt" 2>&1
  grep -v -E 'it/s\]|^\s*$' "$out/log_triton.txt" | tail -30
fi
cat "$out"/gpu*.json

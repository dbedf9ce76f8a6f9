#!/usr/bin/env bash
# Packs vLLM for a lent GPU machine that has torch but no vLLM and no network, and takes at most
# 64 MiB per call: vLLM 0.25.1 (the release that pins the image's torch 2.11) without the kernels
# refinement does not use, and deploy/gpu/vllm-requirements.txt, as one .tar.xz split into parts
# of 58 MiB, one folder per call (OUT_DIR/call-N); deploy/gpu/vllm_check.sh on the machine collects
# them (it keeps /tmp while warm). Usage: deploy/gpu/vllm_bundle.sh [OUT_DIR], default .vllm-bundle
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(realpath -m "${1:-.vllm-bundle}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
platforms=()
for p in manylinux_2_{5,17,24,26,27,28,31,34}_x86_64 manylinux1_x86_64 manylinux2014_x86_64 any; do
  platforms+=(--platform "$p")
done
get() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${platforms[@]}" -d "$work/wheels" "$@"; }
get vllm==0.25.1
get -r "$here/vllm-requirements.txt"
mkdir "$work/site"
python3 -m pip install -q --no-deps --no-compile --only-binary=:all: --python-version 3.12 \
  --implementation cp "${platforms[@]}" --target "$work/site" \
  $(ls "$work"/wheels/*.whl | grep -v '/vllm-')
# vLLM without the FlashAttention-2 kernels (Hopper runs FA3), the MoE kernels, the Rust
# frontend and DeepGEMM: 250 MB of wheel is more than 4 calls' worth
(cd "$work/site" && unzip -q "$work"/wheels/vllm-*.whl -x 'vllm/vllm_flash_attn/_vllm_fa2_C*' \
  'vllm/_moe_C*' 'vllm/vllm-rs' 'vllm/third_party/*' 'vllm/_flashmla*' 'vllm/_qutlass*')
rm -f "$work"/site/xgrammar/lib/*.a  # a static library for building against xgrammar
mkdir -p "$out"
tar -C "$work/site" -cf - . | xz -T0 -6 | split -b 58m - "$work/part_"
# one folder per call, each with the manifest: deploy/gpu/vllm_check.sh collects the parts
(cd "$work" && sha256sum part_* > MANIFEST)
i=0
for part in "$work"/part_*; do
  i=$((i + 1))
  mkdir -p "$out/call-$i"
  mv "$part" "$out/call-$i/"
  cp "$work/MANIFEST" "$out/call-$i/"
done
ls -la "$out"/call-*

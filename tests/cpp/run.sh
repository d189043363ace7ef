#!/usr/bin/env bash
# Configures, builds and runs the C++ unit tests (tests/cpp) with ctest:
#   tests/cpp/run.sh
# Environment: BUILD_DIR (default build-cpp, relative to the repository root), PYTHON (default
# python3: the interpreter with libggml-python installed, which gives ggml's location; an
# explicit ggml_ROOT in the environment wins), JOBS (default 2), SANITIZE (e.g. address,undefined:
# the library and the tests built with those sanitizers, -DMINICPM_SANITIZE; any report fails the
# run). Exits non-zero on any failure.
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

EXTRA=()
if [ -n "${SANITIZE:-}" ]; then
    EXTRA+=("-DMINICPM_SANITIZE=$SANITIZE" -DCMAKE_BUILD_TYPE=RelWithDebInfo)
    # halt on the first report, UBSan included (its default is to print and go on)
    export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:halt_on_error=1}"
    export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"
fi
cmake -S . -B "$BUILD_DIR" -DMINICPM_BUILD_TESTS=ON -Dggml_ROOT="$ggml_ROOT" "${EXTRA[@]}"
cmake --build "$BUILD_DIR" -j "$JOBS"
ctest --test-dir "$BUILD_DIR" --output-on-failure

#!/usr/bin/env bash
# Builds the Python extension with AddressSanitizer + UndefinedBehaviorSanitizer
# (-DMINICPM_SANITIZE=address,undefined) into the active environment and runs a subset of the
# Python tests with the sanitizer runtimes preloaded (the interpreter itself is not
# instrumented). Any report fails the run. It replaces the installed package: run it last, or
# in a virtual environment of its own.
#   tests/sanitize/python.sh [pytest args...]    (default: the subset below)
# Environment: PYTHON (default python), BUILD_DIR (default build-asan-py), CPP_TESTS=1 (the C++
# unit tests of tests/cpp are built in the same instrumented build and run with ctest first, leak
# checking on: one sanitizer build of the library serves both, as .ci/run uses it).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-python}"
BUILD_DIR="${BUILD_DIR:-build-asan-py}"
SAN="address,undefined"
CPP_TESTS="${CPP_TESTS:-0}"
EXTRA=()
[ "$CPP_TESTS" = 1 ] && EXTRA+=(--config-settings=cmake.define.MINICPM_BUILD_TESTS=ON)

"$PYTHON" -m pip install -q --no-build-isolation --no-deps --force-reinstall \
    --config-settings=cmake.define.MINICPM_SANITIZE="$SAN" \
    --config-settings=cmake.build-type=RelWithDebInfo \
    --config-settings=cmake.define.CMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" \
    --config-settings=cmake.define.CMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g" \
    --config-settings=build-dir="$BUILD_DIR" "${EXTRA[@]}" .

if [ "$CPP_TESTS" = 1 ]; then
    # as tests/cpp/run.sh runs them under SANITIZE: halt on the first report, leaks included
    ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:halt_on_error=1}" \
    UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}" \
        ctest --test-dir "$BUILD_DIR" --output-on-failure
fi

CC_BIN="${CC:-gcc}"
ASAN_LIB="$("$CC_BIN" -print-file-name=libasan.so)"
UBSAN_LIB="$("$CC_BIN" -print-file-name=libubsan.so)"
for lib in "$ASAN_LIB" "$UBSAN_LIB"; do
    [ -e "$lib" ] || { echo "python.sh: sanitizer runtime $lib not found" >&2; exit 1; }
done

TESTS=("$@")
if [ ${#TESTS[@]} -eq 0 ]; then
    # The error and API hardening tests, LLM and vision parity, cross-session batching (threads
    # sharing one batch graph over several sessions' caches), the fuzz slice (its workers
    # inherit the preloaded runtimes; they leave their address-space limit off under ASan).
    TESTS=(tests/test_errors.py tests/test_hardening_api.py tests/test_llm_parity.py tests/test_vision_parity.py
           tests/test_llm_batch.py tests/test_fuzz_slice.py -q -x)
fi

# Leak checking is off: the interpreter and torch keep allocations alive at exit by design.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:halt_on_error=1:abort_on_error=0:detect_odr_violation=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"
LD_PRELOAD="$ASAN_LIB:$UBSAN_LIB${LD_PRELOAD:+:$LD_PRELOAD}" "$PYTHON" -m pytest "${TESTS[@]}"

#!/usr/bin/env bash
# Runs the test suite with Bazel: `bazel test //...`, offline.
#
# Installs Debian's Bazel 4.2.3 (bazel-bootstrap, bazel-rules-java) when it is
# missing, points the Python toolchain at the interpreter where requirements.txt
# was installed, and passes SQ_KERAS_DATA_DIR to the tests. Extra arguments go
# to `bazel test` (e.g. `tools/bazel_test.sh //:layers_test`); with none it
# runs //... . See the Bazel section of docs/architecture.md.
#
# Environment:
#   PYTHON_BIN_PATH    interpreter for the tests (default: `python`/`python3`
#                      on PATH, resolved to its real executable)
#   SQ_KERAS_DATA_DIR  MNIST directory, relative to the current one or absolute
#                      (default: ../shared/data beside the repo)
#   BAZEL              the bazel command (default: bazel)
#   SQ_KERAS_SKIP_BUILD_CHECK=1  skip tools/bazel/check_build.py
#   SQ_KERAS_BAZEL_COMMAND  `test` (default) or `build` (what CI runs: the
#                      full test run takes 10+ minutes on 2 cores)
set -euo pipefail
# A relative SQ_KERAS_DATA_DIR means the caller's directory, not the repo's or
# a test sandbox's: made absolute before anything changes directory.
if [ -n "${SQ_KERAS_DATA_DIR:-}" ]; then
  SQ_KERAS_DATA_DIR="$(realpath -ms -- "$SQ_KERAS_DATA_DIR")"
fi
cd "$(dirname "$0")/.."

BAZEL="${BAZEL:-bazel}"

# 1. Bazel itself (idempotent: only when something is missing).
if ! command -v "$BAZEL" >/dev/null 2>&1 || [ ! -d /usr/share/bazel/rules/java ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "bazel_test.sh: Bazel is missing; run as root or:" \
      "apt-get install bazel-bootstrap bazel-rules-java" >&2
    exit 1
  fi
  echo "bazel_test.sh: installing bazel-bootstrap and bazel-rules-java" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq bazel-bootstrap bazel-rules-java >/dev/null
fi

# 2. The Python where requirements.txt was installed (pyenv shims resolved).
if [ -z "${PYTHON_BIN_PATH:-}" ]; then
  py="$(command -v python || command -v python3)"
  PYTHON_BIN_PATH="$("$py" -c 'import sys; print(sys.executable)')"
fi
export PYTHON_BIN_PATH
# Bazel does not see site-packages as inputs: hash the installed distributions
# into the test environment so that a pip install invalidates cached results.
py_fingerprint="$("$PYTHON_BIN_PATH" - <<'PY'
import hashlib, importlib.metadata as md, sys
dists = sorted(f"{d.metadata['Name']}=={d.version}" for d in md.distributions())
print(hashlib.sha256("\n".join([sys.version, *dists]).encode()).hexdigest()[:16])
PY
)"

# 3. MNIST, as in .ci/run.
export SQ_KERAS_DATA_DIR="${SQ_KERAS_DATA_DIR:-$(cd .. && pwd)/shared/data}"

# 4. BUILD still matches the imports (a missing dep otherwise shows up only as
#    an ImportError minutes into the run). SQ_KERAS_SKIP_BUILD_CHECK=1 skips it.
if [ -z "${SQ_KERAS_SKIP_BUILD_CHECK:-}" ]; then
  "$PYTHON_BIN_PATH" tools/bazel/check_build.py .
fi

if [ "$#" -eq 0 ]; then
  set -- //...
fi
status=0
nice -n 5 "$BAZEL" "${SQ_KERAS_BAZEL_COMMAND:-test}" \
  --test_env=SQ_KERAS_PY_FINGERPRINT="$py_fingerprint" \
  "$@" || status=$?

# On CI, free the Bazel server's memory (a fresh clone gets a new server anyway).
if [ -n "${CI:-}" ]; then
  "$BAZEL" shutdown >/dev/null 2>&1 || true
fi
exit "$status"

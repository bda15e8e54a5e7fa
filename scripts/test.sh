#!/usr/bin/env bash
# The whole test suite (README's test command): installs what the tests need, then
# format check, clippy, and every test of the workspace with nextest.
set -euo pipefail
cd "$(dirname "$0")/.."

timings=()
stage() {
  local name=$1; shift
  echo "==> $name"
  local start=$SECONDS
  "$@"
  timings+=("$(printf '%-28s %4ds' "$name" $((SECONDS - start)))")
}

stage "install test dependencies" bash scripts/test-deps.sh
stage "cargo fmt --check" cargo fmt --all -- --check
stage "clippy -D warnings" cargo clippy --workspace --all-targets --locked -- -D warnings
# The README's `grove up` command runs verbatim in a test; built here, so the test
# measures the run, not the compiler.
stage "release build of grove" cargo build --release --locked -p grove-cli --bin grove
stage "tests (nextest)" cargo nextest run --workspace --locked --no-fail-fast

echo "==> stage times"
printf '  %s\n' "${timings[@]}"

#!/usr/bin/env bash
# Checks that the workspace builds with Debian's rustc 1.85 (the ARM cross toolchain),
# installing it pinned if needed. Uses its own target dir so it does not disturb the
# main build.
set -euo pipefail
cd "$(dirname "$0")/.."
PIN=1.85.0+dfsg3-1~deb12u3
if ! /usr/bin/rustc --version 2>/dev/null | grep -q '^rustc 1\.85\.'; then
  if [ "$(id -u)" != 0 ]; then
    echo "msrv: need root to install rustc-web=$PIN" >&2
    exit 1
  fi
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "rustc-web=$PIN" "libstd-rust-web-dev=$PIN"
fi
/usr/bin/rustc --version
RUSTC=/usr/bin/rustc CARGO_TARGET_DIR=target/msrv cargo check --workspace --all-targets --locked

#!/usr/bin/env bash
# Release binaries of Grove for Raspberry Pis — aarch64-unknown-linux-gnu (Pi 3/4/5 on
# a 64-bit OS) and armv7-unknown-linux-gnueabihf (32-bit Raspberry Pi OS) — on Debian
# 12 reaching only its package registries. Installs what it needs, idempotently:
# Debian's rustc 1.85 (the version whose ARM standard library Debian ships), that
# standard library for each target (unpacked from Debian's arm64/armhf packages,
# fetched with a private apt lists directory: no `dpkg --add-architecture`), the cross
# gcc and qemu.
#
#   bash cross/build.sh            build both targets' binaries (target/<triple>/release)
#   bash cross/build.sh test       also run the proto and agent unit tests under qemu
set -euo pipefail
cd "$(dirname "$0")/.."

RUST_DEB=1.85.0+dfsg3-1~deb12u3
TARGETS=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)
declare -A DEB_ARCH=([aarch64-unknown-linux-gnu]=arm64 [armv7-unknown-linux-gnueabihf]=armhf)

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
/usr/bin/rustc --version 2>/dev/null | grep -q '^rustc 1\.85\.' ||
  missing+=("rustc-web=$RUST_DEB" "libstd-rust-web-dev=$RUST_DEB")
command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v arm-linux-gnueabihf-gcc >/dev/null || missing+=(gcc-arm-linux-gnueabihf libc6-dev-armhf-cross)
command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
command -v file >/dev/null || missing+=(file)
if ((${#missing[@]})); then
  echo "cross: installing ${missing[*]}"
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

for t in "${TARGETS[@]}"; do
  [ -d "/usr/lib/rustlib/$t/lib" ] && continue
  a=${DEB_ARCH[$t]}
  work=$(mktemp -d)
  echo "cross: the $t standard library from Debian's $a packages"
  # Only bookworm main (where 1.85 is): the security suite's ARM indexes are often
  # mid-sync, and a failed index fails the whole update.
  mkdir -p "$work/lists/partial" "$work/parts"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main" >"$work/sources.list"
  o=(-oAPT::Architecture="$a" -oAPT::Architectures="$a" -oDir::State::Lists="$work/lists"
    -oDir::Etc::SourceList="$work/sources.list" -oDir::Etc::SourceParts="$work/parts")
  as_root apt-get "${o[@]}" update -q >/dev/null
  (cd "$work" && as_root apt-get "${o[@]}" download "libstd-rust-web-dev=$RUST_DEB" libstd-rust-web-1.85)
  for d in "$work"/*.deb; do dpkg -x "$d" "$work/x"; done
  as_root cp -r "$work/x/usr/lib/rustlib/$t" /usr/lib/rustlib/
  rm -rf "$work"
done

export RUSTC=/usr/bin/rustc
cargo_x() { cargo --config cross/config.toml "$@"; }
for t in "${TARGETS[@]}"; do
  start=$SECONDS
  cargo_x build --release --locked --target "$t" -p grove-agent -p grove-cluster -p grove-root --bins
  echo "cross: $t release binaries in $((SECONDS - start))s"
  for b in grove-agent grove-cluster grove-root; do
    f=${CARGO_TARGET_DIR:-target}/$t/release/$b
    # (The release profile strips: these are the stripped sizes.)
    printf '  %-14s %9d bytes stripped  %s\n' "$b" "$(stat -c %s "$f")" "$(file -b "$f" | cut -d, -f1-3)"
  done
done
if [ "${1:-}" = test ]; then
  # The proto and agent unit tests as aarch64 binaries, and the agent's seccomp
  # filter as armv7 compiles it, each run through the filter interpreter (qemu-user
  # cannot load a filter) with that architecture's call numbers.
  start=$SECONDS
  # qemu-user 7.2 (Debian 12's) does not emulate openat2(2), which every path the agent
  # resolves inside an image goes through (Linux 5.6; real Raspberry Pi kernels have
  # it): those tests run natively on x86_64 in the test suite, not here.
  cargo_x test --locked --target aarch64-unknown-linux-gnu -p grove-proto -p grove-agent --lib -- \
    --skip confined::tests::symlinks --skip confined::tests::small_reads --skip image::layer \
    --skip spec::tests::users_are_looked_up --skip native::tests::a_pull_past \
    >/tmp/grove-cross-test.log 2>&1 || { tail -40 /tmp/grove-cross-test.log; exit 1; }
  grep -E '^test result|^running' /tmp/grove-cross-test.log
  passed=$(grep -Eo '[0-9]+ passed' /tmp/grove-cross-test.log | awk '{s += $1} END {print s + 0}')
  echo "cross: $passed proto and agent unit tests passed as aarch64 binaries under qemu ($((SECONDS - start))s)"
  start=$SECONDS
  cargo_x test --locked --target armv7-unknown-linux-gnueabihf -p grove-agent --lib seccomp \
    >/tmp/grove-cross-test-arm.log 2>&1 || { tail -40 /tmp/grove-cross-test-arm.log; exit 1; }
  grep -E '^test result|^running' /tmp/grove-cross-test-arm.log
  echo "cross: the armv7 seccomp program checked under qemu ($((SECONDS - start))s)"
fi

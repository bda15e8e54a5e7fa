#!/usr/bin/env bash
# Debian packages of Grove, one per architecture: grove_<version>_<arch>.deb with the
# three daemons in /usr/bin, their systemd units, and commented configurations in
# /etc/grove (conffiles). The postinst reloads systemd and starts nothing: every daemon
# needs its configuration (root address, join token) first.
#
#   bash cross/deb.sh amd64|arm64|armhf [OUT_DIR]   one package (amd64 builds its
#                                                   binaries; ARM ones come from
#                                                   cross/build.sh)
#   bash cross/deb.sh check                          all three, then install the amd64
#                                                   one here and run its binaries, and
#                                                   look inside the arm64 one
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)

package() {
  local arch=$1 out=$2 triple bins stage
  case $arch in
  amd64) triple= ;;
  arm64) triple=aarch64-unknown-linux-gnu ;;
  armhf) triple=armv7-unknown-linux-gnueabihf ;;
  *) echo "deb: unknown architecture $arch (amd64, arm64, armhf)" >&2; return 2 ;;
  esac
  bins=$target/${triple:+$triple/}release
  if [ "$arch" = amd64 ]; then
    cargo build --release --locked -p grove-root -p grove-cluster -p grove-agent --bins
  elif [ ! -x "$bins/grove-agent" ]; then
    echo "deb: no $arch binaries in $bins; run bash cross/build.sh first" >&2
    return 1
  fi
  stage=$(mktemp -d)
  # (The package's ./ becomes /: it must not carry mktemp's 0700.)
  chmod 755 "$stage"
  for b in grove-root grove-cluster grove-agent; do
    install -D -m755 "$bins/$b" "$stage/usr/bin/$b"
  done
  install -d "$stage/lib/systemd/system" "$stage/etc/grove" "$stage/DEBIAN"
  install -m644 systemd/grove-*.service "$stage/lib/systemd/system/"
  for c in root cluster agent; do
    install -m644 "systemd/etc/$c.toml" "$stage/etc/grove/$c.toml"
    echo "/etc/grove/$c.toml" >>"$stage/DEBIAN/conffiles"
  done
  cat >"$stage/DEBIAN/control" <<CONTROL
Package: grove
Version: $version
Architecture: $arch
Maintainer: Grove developers <grove@localhost>
Section: admin
Priority: optional
Depends: iproute2, nftables
Recommends: btrfs-progs
Description: lightweight hierarchical orchestrator for edge computing
 Grove's root and cluster orchestrators and its worker agent (containers on
 namespaces and cgroups, a kernel overlay), as systemd services. Nothing starts
 until configured in /etc/grove and enabled with systemctl.
CONTROL
  cat >"$stage/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
# Starts nothing: each daemon needs /etc/grove/<daemon>.toml filled in first.
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
fi
POSTINST
  chmod 755 "$stage/DEBIAN/postinst"
  mkdir -p "$out"
  dpkg-deb --root-owner-group --build "$stage" "$out/grove_${version}_${arch}.deb" >/dev/null
  rm -rf "$stage"
  echo "deb: $out/grove_${version}_${arch}.deb ($(stat -c %s "$out/grove_${version}_${arch}.deb") bytes)"
}

if [ "${1:-}" = check ]; then
  out=$target/deb
  for a in amd64 arm64 armhf; do package "$a" "$out"; done
  dpkg -i "$out/grove_${version}_amd64.deb"
  for b in grove-root grove-cluster grove-agent; do
    echo "deb: installed $(/usr/bin/$b --version)"
  done
  # The test builds' defence switches (feature defences-off) are in no packaged binary:
  # the variable they read is not even a string there.
  for p in "$out"/grove_"${version}"_*.deb; do
    y=$(mktemp -d)
    dpkg-deb -x "$p" "$y"
    for b in grove-root grove-cluster grove-agent; do
      if grep -q GROVE_DEFENCES_OFF "$y/usr/bin/$b"; then
        echo "deb: $(basename "$p") $b was built with the test-only defence switches" >&2
        exit 1
      fi
    done
    rm -rf "$y"
  done
  echo "deb: no packaged binary can switch a defence off"
  # The units as installed, pointing at the installed binaries.
  systemd-analyze verify --man=no /lib/systemd/system/grove-{root,cluster,agent}.service
  echo "deb: systemd-analyze verify passed on the installed units"
  dpkg-deb --info "$out/grove_${version}_arm64.deb" | grep -E 'Package|Version|Architecture'
  x=$(mktemp -d)
  dpkg-deb -x "$out/grove_${version}_arm64.deb" "$x"
  file -b "$x/usr/bin/grove-agent" | grep -q 'ARM aarch64' || { echo "deb: the arm64 package holds no aarch64 agent" >&2; exit 1; }
  echo "deb: arm64 agent: $(file -b "$x/usr/bin/grove-agent" | cut -d, -f1-3)"
  rm -rf "$x"
  dpkg --purge grove >/dev/null
  echo "deb: amd64 installed, ran and purged; arm64 and armhf built"
else
  package "${1:?usage: cross/deb.sh amd64|arm64|armhf [OUT_DIR] | check}" "${2:-$target/deb}"
fi

#!/usr/bin/env bash
# Installs what Grove's test suite needs on Debian 12, idempotently:
#   - libcoap3-bin (coap-client-notls, the libcoap interop peer),
#   - python3-venv and a venv at .venv with aiocoap[oscore] (the OSCORE interop peer)
#     and prometheus_client (its parser reads /metrics),
#   - cargo-nextest (the test runner),
#   - a C compiler for the crates that build C (SQLite, ring),
#   - for images and containers: busybox-static (the test images' content), umoci
#     (builds them), skopeo (pushes them), docker-registry (a real registry on
#     loopback), apache2-utils (htpasswd) and openssl (a test CA),
#   - for the data plane: iproute2, nftables, util-linux (nsenter), procps (kill),
#   - btrfs-progs (the workers' bounded writable layers),
#   - systemd (systemd-analyze verifies the units),
#   - for the dashboard's browser test: chromium (headless), Node.js with npm, and
#     playwright-core (pinned in tests/browser/package-lock.json) in tests/browser.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

AIOCOAP='aiocoap[oscore]==0.4.17'
# Prometheus' own Python client: its OpenMetrics parser reads the daemons' /metrics.
PROMETHEUS='prometheus_client==0.21.1'

missing=()
# A C compiler: SQLite (rusqlite, bundled) and ring are built from C sources.
command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
command -v coap-client-notls >/dev/null 2>&1 || missing+=(libcoap3-bin)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
# A static busybox (Debian's plain `busybox` is dynamic: useless inside an image).
{ [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; } || missing+=(busybox-static)
command -v umoci >/dev/null 2>&1 || missing+=(umoci)
command -v skopeo >/dev/null 2>&1 || missing+=(skopeo)
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
command -v htpasswd >/dev/null 2>&1 || missing+=(apache2-utils)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v nft >/dev/null 2>&1 || missing+=(nftables)
command -v nsenter >/dev/null 2>&1 || missing+=(util-linux)
# Bounded writable layers: one btrfs file system per worker (agent/src/container/quota.rs).
command -v mkfs.btrfs >/dev/null 2>&1 || missing+=(btrfs-progs)
# The escape suite compiles its small static attack programs (tests/fixtures/*.c).
[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || [ "$(uname -m)" != x86_64 ] || missing+=(libc6-dev)
command -v kill >/dev/null 2>&1 || missing+=(procps)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "test-deps: need root to install: ${missing[*]}" >&2
    exit 1
  fi
  echo "test-deps: installing ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! .venv/bin/python -c 'import aiocoap.oscore, cbor2, cryptography' >/dev/null 2>&1; then
  echo "test-deps: creating .venv with $AIOCOAP"
  rm -rf .venv
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check "$AIOCOAP"
fi
if ! .venv/bin/python -c 'import prometheus_client.openmetrics.parser' >/dev/null 2>&1; then
  echo "test-deps: adding $PROMETHEUS to .venv"
  .venv/bin/pip install -q --disable-pip-version-check "$PROMETHEUS"
fi

# playwright-core 1.65 needs Node.js 20 or newer (Debian 12's own nodejs is 18; this
# machine kind ships 20).
node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$node_major" -lt 20 ]; then
  echo "test-deps: Node.js $(node --version 2>/dev/null || echo missing) is too old for playwright-core (the browser test): 20 or newer is needed" >&2
  exit 1
fi
if [ ! -f tests/browser/node_modules/playwright-core/package.json ]; then
  echo "test-deps: installing playwright-core into tests/browser (npm ci)"
  npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "test-deps: installing cargo-nextest"
  cargo install cargo-nextest --locked
fi
echo "test-deps: ready (coap-client-notls, .venv with aiocoap, cargo-nextest, busybox, umoci, skopeo, docker-registry, htpasswd, openssl, chromium, playwright-core)"

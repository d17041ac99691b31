#!/usr/bin/env bash
# Installs what loupe's build and tests need, from Debian packages and npm only.
# Idempotent: packages already present are not reinstalled.
set -euo pipefail
cd "$(dirname "$0")/.."

debs=(cmake g++ make pkg-config libeigen3-dev libstb-dev libsentencepiece-dev doctest-dev
      python3-torch python3-numpy python3-pil python3-sentencepiece emscripten chromium
      libcpp-httplib-dev slurm-wlm munge g++-aarch64-linux-gnu qemu-user clang libclang-rt-dev)
# cpp-httplib: loupe serve; slurm-wlm + munge: the caption_slurm test starts a one-node cluster;
# g++-aarch64 + qemu-user: the NEON kernels run under qemu (tests/cross); clang + its runtime
# (libFuzzer, ASan, UBSan): the sanitizer job and tests/fuzz
command -v node >/dev/null 2>&1 || debs+=(nodejs npm)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  # No package starts a daemon of its own (munge, slurmctld, slurmd ship init scripts): the
  # tests start the services they need and stop them by PID. policy-rc.d 101 = "not allowed".
  policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    trap '$SUDO rm -f "$policy"' EXIT
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null && $SUDO chmod +x "$policy"
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ -z "$policy" ] || { $SUDO rm -f "$policy"; trap - EXIT; }
fi

# node-llama-cpp (llama.cpp's prebuilt binaries, a test reference) and playwright-core (browser tests).
# (npm install, not npm ci: npm 11's ci insists on lock entries for every platform's optional binary.)
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ] ||
   [ package.json -nt node_modules/.package-lock.json ]; then
  echo "setup: npm install" >&2
  npm install --ignore-scripts --omit=optional --no-audit --no-fund --loglevel=error
fi

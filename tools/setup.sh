#!/usr/bin/env bash
# Set up everything tinyrnn needs on a fresh Debian/Ubuntu machine, into ./.venv.
# Idempotent: re-running it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

# Debian packages: a C compiler for the host harness, the Cortex-M cross compiler,
# newlib, and QEMU for the emulated boards; CMake, g++ and clang for the package tests
# (CMake builds, C++ consumers of the generated header); clang with lld for the clang x core
# test matrix.
PKGS="python3 python3-venv python3-dev gcc libc6-dev gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm cmake g++ clang lld"
missing=""
for p in $PKGS; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# torch first, pinned to the CPU build, so that the project's torch requirement is already
# satisfied and pip never pulls a CUDA build.
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e '.[test]'

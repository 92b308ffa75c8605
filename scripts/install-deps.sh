#!/usr/bin/env bash
# Installs pdserve's build and test dependencies from Debian 12 packages: the compilers and
# libraries, Python's venv (the tests' gRPC client and the model fetch use pip), clang-14 with
# libFuzzer and OpenMP (the fuzz build), qemu-user (the test that runs the portable build as
# an older CPU), openssl (the mutual-TLS test makes its certificates with it) and dpkg-dev
# (dpkg-source unpacks Debian's Abseil source for the ThreadSanitizer build:
# scripts/tsan-abseil.sh), and dnsmasq-base (the deploy conformance test serves the headless
# Services' DNS names with it). The router's OpenAI-compatible HTTP front uses cpp-httplib.
# Idempotent: does nothing when every package is already present.
set -euo pipefail

PACKAGES=(
  cmake ninja-build g++ pkg-config
  libopenblas-openmp-dev libabsl-dev libspdlog-dev nlohmann-json3-dev libcli11-dev
  libgtest-dev libgmock-dev libbenchmark-dev libxxhash-dev libpcre2-dev
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc prometheus-cpp-dev
  libssl-dev libcpp-httplib-dev libboost-context-dev
  python3-venv ca-certificates
  clang-14 libclang-rt-14-dev libomp-14-dev
  qemu-user openssl dpkg-dev
  dnsmasq-base
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if ((${#missing[@]} == 0)); then
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "error: need root (or sudo) to install: ${missing[*]}" >&2
    exit 1
  fi
fi

echo "Installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

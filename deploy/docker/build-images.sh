#!/usr/bin/env bash
# Builds pdserve's container images from deploy/docker/Dockerfile, with the repository root as
# the context, using docker (when its daemon answers), else podman, else buildah:
#
#   deploy/docker/build-images.sh [cpu|gpu|model|all] [EXTRA BUILD OPTIONS...]
#
#   cpu    pdserve:cpu                    (target runtime-cpu)
#   gpu    pdserve:gpu                    (target runtime-gpu; needs NVIDIA's CUDA apt repository)
#   model  pdserve-model-smollm2:0.1.2    (target model-smollm2; needs PyPI)
#   all    the three (default)
#
# Extra options go to every build, e.g. --build-arg RUNTIME_BASE=registry.example/debian:bookworm-slim
# or --pull=never. CONTAINER_TOOL=docker|podman|buildah picks the tool; PDSERVE_IMAGE_PREFIX
# (e.g. registry.example/team/) is put in front of each tag. The OCI labels (revision, version,
# created, source) come from git; PDSERVE_REVISION etc. override them.
set -euo pipefail
cd "$(dirname "$0")/../.."

what=${1:-all}
shift || true
case "$what" in
  cpu | gpu | model | all) ;;
  -h | --help)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
    ;;
  *)
    echo "usage: $0 [cpu|gpu|model|all] [EXTRA BUILD OPTIONS...]" >&2
    exit 2
    ;;
esac

tool=${CONTAINER_TOOL:-}
if [[ -z "$tool" ]]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    tool=docker
  elif command -v podman >/dev/null; then
    tool=podman
  elif command -v buildah >/dev/null; then
    tool=buildah
  else
    echo "error: no container build tool: docker (with a running daemon), podman or buildah" >&2
    echo "       (Debian 12: apt-get install podman, or buildah)" >&2
    exit 1
  fi
fi
case "$tool" in
  docker) build=(docker build) ;;
  podman) build=(podman build --layers) ;;
  buildah) build=(buildah bud --layers) ;;
  *)
    echo "error: CONTAINER_TOOL=$tool: expected docker, podman or buildah" >&2
    exit 2
    ;;
esac

# OCI labels from git (PDSERVE_REVISION, PDSERVE_VERSION, PDSERVE_CREATED, PDSERVE_SOURCE
# override), stable for a given commit so that they do not defeat the layer cache.
revision=${PDSERVE_REVISION:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
version=${PDSERVE_VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
created=${PDSERVE_CREATED:-$(git log -1 --format=%cI 2>/dev/null || echo unknown)}
source=${PDSERVE_SOURCE:-$(git remote get-url origin 2>/dev/null || true)}
labels=(
  --build-arg "PDSERVE_REVISION=$revision"
  --build-arg "PDSERVE_VERSION=$version"
  --build-arg "PDSERVE_CREATED=$created"
  --build-arg "PDSERVE_SOURCE=$source"
)

prefix=${PDSERVE_IMAGE_PREFIX:-}
one() {  # TARGET TAG
  echo "==> $tool: target $1 -> $prefix$2" >&2
  local start=$SECONDS
  "${build[@]}" -f deploy/docker/Dockerfile --target "$1" -t "$prefix$2" "${labels[@]}" \
    "${extra[@]}" .
  echo "==> $prefix$2 built in $((SECONDS - start)) s" >&2
}
extra=("$@")

case "$what" in
  cpu) one runtime-cpu pdserve:cpu ;;
  gpu) one runtime-gpu pdserve:gpu ;;
  model) one model-smollm2 pdserve-model-smollm2:0.1.2 ;;
  all)
    one runtime-cpu pdserve:cpu
    one model-smollm2 pdserve-model-smollm2:0.1.2
    one runtime-gpu pdserve:gpu
    ;;
esac

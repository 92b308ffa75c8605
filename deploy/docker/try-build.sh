#!/usr/bin/env bash
# Builds and checks the images on a Debian 12 machine that cannot pull from any container
# registry (only Debian's apt mirrors and PyPI reachable). Manual, slow (the build stage
# compiles the whole project), never run by CI. Needs root.
#
#   deploy/docker/try-build.sh [images|chroot|all]     (default: all)
#
# images  1. makes the base images without a registry: `debootstrap --variant=minbase bookworm`
#            (what Debian's official images are made from too), imported into podman as
#            docker.io/library/debian:bookworm and, with the official slim variant's dpkg
#            excludes and docs removed, as debian:bookworm-slim;
#         2. builds pdserve:cpu and pdserve-model-smollm2:0.1.2 with build-images.sh (podman,
#            --pull=never, host network);
#         3. checks them: the image config (user 10001:10001, no entrypoint, labels), `id`, ldd
#            of each binary, `--help` of each, and an init-container-like copy of the model
#            into a volume that `pdserve demo` then answers a chat prompt from, as uid 10001
#            with no network.
# chroot  a check of the runtime stage's package list that needs no container tool and no
#         image build: a bookworm-slim-like rootfs (the debootstrap above), the list that
#         runtime-packages.sh prints for build/bin's binaries (TRY_BUILD_BIN_DIR: another
#         directory) installed into it with apt
#         --no-install-recommends, the binaries copied in, and each run there as uid 10001
#         (`--help`, ldd, `pdserve demo` on the synthetic model).
#
# The GPU image is not built here: its stages install from NVIDIA's CUDA apt repository.
#
# Environment: TRY_BUILD_DIR (work directory, default /var/tmp/pdserve-try-build; the rootfs
# and podman's storage under it are reused by later runs), TRY_BUILD_CONTEXT=head|worktree
# (head, the default: the build context is `git archive HEAD` (TRY_BUILD_REF: another commit)
# plus this directory's
# uncommitted deploy/docker files and .dockerignore, so that half-made edits in the working
# tree cannot break the build; worktree: the working tree as it is), TRY_BUILD_STORAGE_DRIVER
# (podman's storage driver; default overlay, else vfs), BUILDAH_ISOLATION (e.g. chroot),
# DEBIAN_MIRROR (default http://deb.debian.org/debian).
#
# Runs itself under `nice -n 19 ionice -c3`: the machines this was written on share their cores.
set -euo pipefail
if [[ -z "${PDSERVE_TRY_BUILD_NICED:-}" ]]; then
  export PDSERVE_TRY_BUILD_NICED=1
  exec nice -n 19 ionice -c3 "$0" "$@"
fi
cd "$(dirname "$0")/../.."
repo=$PWD

what=${1:-all}
case "$what" in
  images | chroot | all) ;;
  *)
    echo "usage: $0 [images|chroot|all]" >&2
    exit 2
    ;;
esac
if [[ $(id -u) -ne 0 ]]; then
  echo "error: try-build.sh needs root (debootstrap, chroot, podman's storage)" >&2
  exit 1
fi

work=${TRY_BUILD_DIR:-/var/tmp/pdserve-try-build}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$work"
log() { echo "[try-build $(date -u +%T)] $*" >&2; }
step_start=$SECONDS
timed() {  # DESCRIPTION COMMAND...: runs it, logs its duration
  local what=$1 t=$SECONDS
  shift
  log "$what ..."
  "$@"
  log "$what: done in $((SECONDS - t)) s"
}

need_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]} > 0)); then
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null
  fi
}

# --- the base rootfs ---------------------------------------------------------------------------
rootfs=$work/rootfs-bookworm
make_rootfs() {
  if [[ -f "$rootfs/.pdserve-try-build-done" ]]; then
    log "reusing $rootfs"
    return
  fi
  need_packages debootstrap
  rm -rf "$rootfs"
  local t=$SECONDS
  log "debootstrap --variant=minbase bookworm ($work/debootstrap.log) ..."
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -n 30 "$work/debootstrap.log" >&2
    exit 1
  }
  log "debootstrap: done in $((SECONDS - t)) s"
  # Apt sources as in Debian's official image (with updates and security).
  rm -f "$rootfs/etc/apt/sources.list"
  cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  # The official images' apt settings (debuerreotype): no cached .debs, no translations.
  cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  echo 'Acquire::Languages "none";' >"$rootfs/etc/apt/apt.conf.d/docker-no-languages"
  # This machine's TLS setup, so that pip (and https apt sources) work inside the builds here:
  # the CA bundle, the CAs it has beyond Debian's own (kept where update-ca-certificates, run
  # when an image installs ca-certificates, adds them back) and pip's configuration. Not part of
  # any image built elsewhere.
  if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
    mkdir -p "$rootfs/etc/ssl/certs" "$rootfs/usr/local/share/ca-certificates"
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
    python3 - "$rootfs/usr/local/share/ca-certificates" <<'EOF'
import glob, os, re, sys
pem = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
norm = lambda c: "".join(c.split())
known = set()
for f in glob.glob("/usr/share/ca-certificates/**/*.crt", recursive=True):
    known.update(norm(c) for c in pem.findall(open(f, errors="replace").read()))
extra = [c for c in pem.findall(open("/etc/ssl/certs/ca-certificates.crt").read())
         if norm(c) not in known]
for i, c in enumerate(extra):
    with open(os.path.join(sys.argv[1], f"try-build-host-{i}.crt"), "w") as out:
        out.write(c + "\n")
print(f"{len(extra)} host CA certificate(s) beyond Debian's copied in", file=sys.stderr)
EOF
  fi
  [[ -f /etc/pip.conf ]] && cp /etc/pip.conf "$rootfs/etc/pip.conf"
  chroot "$rootfs" apt-get clean
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
  touch "$rootfs/.pdserve-try-build-done"
  log "rootfs: $(du -sh --exclude=proc "$rootfs" | cut -f1)"
}

# Turns a copy of the rootfs into what debian:bookworm-slim is: the same packages, with dpkg
# told to leave out documentation, manuals and translations, and those removed.
slim_down() {  # ROOTFS
  local r=$1
  mkdir -p "$r/etc/dpkg/dpkg.cfg.d"
  cat >"$r/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/info/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/man/*
EOF
  find "$r/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
  find "$r/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
  rm -rf "$r"/usr/share/{info,groff,lintian,linda,man}/*
  find "$r/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias \
    -exec rm -rf {} + 2>/dev/null || true
}

# --- images ----------------------------------------------------------------------------------
# What the sandbox this was written in needs (and any root podman tolerates): it runs cgroups in
# hybrid mode, which crun refuses and runc handles, and lacks CAP_SYS_RESOURCE, so the default
# rlimits podman asks for (nofile and nproc at 1048576 and more) cannot be set; builds run with
# chroot isolation (no OCI runtime, no cgroups).
oci_runtime=${TRY_BUILD_OCI_RUNTIME:-runc}
isolation=${BUILDAH_ISOLATION:-chroot}
read -r -a run_opts <<<"${TRY_BUILD_RUN_OPTS:---ulimit nofile=20000:20000 --ulimit nproc=4096:4096}"
podman_cmd=(podman)
images() {
  need_packages podman buildah runc
  local driver=${TRY_BUILD_STORAGE_DRIVER:-}
  local storage=$work/containers
  mkdir -p "$storage/root" "$storage/run"
  if [[ -z "$driver" ]]; then
    driver=overlay
    if ! podman --root "$storage/root" --runroot "$storage/run" --storage-driver overlay \
      info >/dev/null 2>&1; then
      driver=vfs
    fi
  fi
  # One command for all that follows (build-images.sh included, through PATH): podman with the
  # storage chosen here.
  mkdir -p "$work/bin"
  local real_podman
  real_podman=$(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin command -v podman)
  printf '#!/bin/sh\nexec %q --runtime %q --root %q --runroot %q --storage-driver %q "$@"\n' \
    "$real_podman" "$oci_runtime" "$storage/root" "$storage/run" "$driver" >"$work/bin/podman"
  chmod +x "$work/bin/podman"
  podman_cmd=("$work/bin/podman")
  log "podman $(podman --version | awk '{print $3}'), runtime $oci_runtime, storage $driver in $storage, build isolation $isolation, run options: ${run_opts[*]}"

  if ! "${podman_cmd[@]}" image exists docker.io/library/debian:bookworm ||
    ! "${podman_cmd[@]}" image exists docker.io/library/debian:bookworm-slim; then
    tar --numeric-owner -C "$rootfs" --exclude=./.pdserve-try-build-done -cf "$work/bookworm.tar" .
    timed "import debian:bookworm" "${podman_cmd[@]}" import \
      --change 'CMD ["bash"]' "$work/bookworm.tar" docker.io/library/debian:bookworm
    rm -rf "$work/rootfs-slim"
    cp -a "$rootfs" "$work/rootfs-slim"
    slim_down "$work/rootfs-slim"
    tar --numeric-owner -C "$work/rootfs-slim" --exclude=./.pdserve-try-build-done \
      -cf "$work/bookworm-slim.tar" .
    timed "import debian:bookworm-slim" "${podman_cmd[@]}" import \
      --change 'CMD ["bash"]' "$work/bookworm-slim.tar" docker.io/library/debian:bookworm-slim
    rm -rf "$work/rootfs-slim" "$work/bookworm.tar" "$work/bookworm-slim.tar"
  fi

  # The build context.
  local context=$repo ref=${TRY_BUILD_REF:-HEAD}
  if [[ "${TRY_BUILD_CONTEXT:-head}" == head ]]; then
    context=$work/context
    rm -rf "$context"
    mkdir -p "$context"
    git -C "$repo" archive "$ref" | tar -x -C "$context"
    mkdir -p "$context/deploy/docker"
    cp -a "$repo"/deploy/docker/. "$context/deploy/docker/"
    cp -a "$repo/.dockerignore" "$context/"
    log "context: git archive $(git -C "$repo" rev-parse --short "$ref") + working-tree deploy/docker and .dockerignore"
  else
    log "context: the working tree $repo as it is"
  fi
  export PDSERVE_REVISION PDSERVE_VERSION PDSERVE_CREATED
  PDSERVE_REVISION=$(git -C "$repo" rev-parse "$ref")
  PDSERVE_VERSION=$(git -C "$repo" describe --tags --always "$ref")
  PDSERVE_CREATED=$(git -C "$repo" log -1 --format=%cI "$ref")

  local build=(env PATH="$work/bin:$PATH" CONTAINER_TOOL=podman
    "$context/deploy/docker/build-images.sh")
  local opts=(--pull=never --network=host --isolation="$isolation")
  timed "build pdserve:cpu (target runtime-cpu, the whole project compiled)" \
    "${build[@]}" cpu "${opts[@]}" 2>&1 | tee "$work/build-cpu.log"
  timed "build pdserve-model-smollm2:0.1.2" \
    "${build[@]}" model "${opts[@]}" 2>&1 | tee "$work/build-model.log"

  check_images
}

fail=0
check() {  # DESCRIPTION COMMAND...: runs a check, records pass/fail
  local what=$1
  shift
  if "$@"; then
    log "PASS: $what"
  else
    log "FAIL: $what"
    fail=1
  fi
}

check_images() {
  local p=("${podman_cmd[@]}") pw=${podman_cmd[0]}
  local bins=(pdserve-router pdserve-prefill pdserve-decode pdserve)
  "${p[@]}" images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'pdserve|debian' >&2
  local cfg user entrypoint revision
  cfg=$("${p[@]}" image inspect localhost/pdserve:cpu --format \
    '{{.Config.User}}|{{.Config.Entrypoint}}|{{.Config.Cmd}}|{{index .Config.Labels "org.opencontainers.image.revision"}}|{{.Config.Env}}')
  log "pdserve:cpu config: user|entrypoint|cmd|revision|env = $cfg"
  IFS='|' read -r user entrypoint _ revision _ <<<"$cfg"
  check "pdserve:cpu runs as 10001:10001" [ "$user" = "10001:10001" ]
  check "pdserve:cpu sets no entrypoint" [ "$entrypoint" = "[]" ]
  check "pdserve:cpu is labelled with the commit built" [ "$revision" = "$PDSERVE_REVISION" ]
  check "pdserve:cpu: id says uid 10001" \
    bash -c "out=\$('$pw' run ${run_opts[*]} --rm --network none localhost/pdserve:cpu id) && echo \"\$out\" >&2 && grep -q '^uid=10001(pdserve) gid=10001(pdserve)' <<<\"\$out\""
  check "pdserve:cpu: /usr/local/bin holds exactly the four binaries" \
    bash -c "[ \"\$('$pw' run ${run_opts[*]} --rm --network none localhost/pdserve:cpu ls /usr/local/bin | tr '\n' ' ')\" = 'pdserve pdserve-decode pdserve-prefill pdserve-router ' ]"
  local b
  for b in "${bins[@]}"; do
    check "pdserve:cpu: ldd /usr/local/bin/$b finds every library" \
      bash -c "out=\$('$pw' run ${run_opts[*]} --rm --network none localhost/pdserve:cpu ldd /usr/local/bin/$b 2>&1) && ! grep -q 'not found' <<<\"\$out\""
    check "pdserve:cpu: $b --help" \
      bash -c "'$pw' run ${run_opts[*]} --rm --network none localhost/pdserve:cpu /usr/local/bin/$b --help >/dev/null"
  done
  check "pdserve:cpu: no -dev package installed" \
    bash -c "! '$pw' run ${run_opts[*]} --rm --network none localhost/pdserve:cpu dpkg-query -W -f '\${Package}\n' | grep -E -- '-dev(:|\$)'"
  "${p[@]}" run "${run_opts[@]}" --rm --network none localhost/pdserve:cpu cat /usr/share/pdserve/runtime-packages.txt \
    >"$work/runtime-packages.image.txt" || true
  log "runtime packages in the image: $(tr '\n' ' ' <"$work/runtime-packages.image.txt")"

  # The init container's copy, then the demo on that model, as the Deployment would do it.
  local models=$work/models
  rm -rf "$models"
  mkdir -p "$models"
  chmod 0777 "$models"  # an emptyDir is world-writable
  check "pdserve-model-smollm2:0.1.2: init-container copy into /models (as uid 10001)" \
    "${p[@]}" run "${run_opts[@]}" --rm --network none --read-only -v "$models:/models" localhost/pdserve-model-smollm2:0.1.2 \
    cp /model/SmolLM2-135M-Instruct.Q4_1.gguf /models/
  check "the copied model has the expected sha256" bash -c \
    "echo 'b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $models/SmolLM2-135M-Instruct.Q4_1.gguf' | sha256sum --check"
  check "pdserve:cpu: pdserve demo answers from the model image's file (uid 10001, no network)" \
    bash -c "'$pw' run ${run_opts[*]} --rm --network none --read-only --tmpfs /tmp -v '$models:/models:ro' localhost/pdserve:cpu \
      /usr/local/bin/pdserve demo --model /models/SmolLM2-135M-Instruct.Q4_1.gguf 2>&1 \
      | tee '$work/demo-image.log' | grep -E '^(user|assistant):|finish_reason' >&2 \
      && grep -q 'finish_reason=' '$work/demo-image.log'"
}

# --- chroot emulation of the runtime stage -------------------------------------------------------
chroot_check() {
  local bin_dir=${TRY_BUILD_BIN_DIR:-$repo/build/bin} r=$work/rootfs-runtime
  local bins=(pdserve-router pdserve-prefill pdserve-decode pdserve)
  for b in "${bins[@]}"; do
    [[ -x "$bin_dir/$b" ]] || {
      echo "error: $bin_dir/$b missing: scripts/build.sh release first" >&2
      exit 1
    }
  done
  local list
  list=$("$repo/deploy/docker/runtime-packages.sh" "${bins[@]/#/$bin_dir/}")
  log "runtime packages for $bin_dir: $(tr '\n' ' ' <<<"$list")"
  rm -rf "$r"
  cp -a "$rootfs" "$r"
  slim_down "$r"
  cp /etc/resolv.conf "$r/etc/resolv.conf"
  mount -t proc proc "$r/proc"
  trap 'umount "$r/proc" 2>/dev/null || true' EXIT
  # What the runtime-cpu stage's RUN does, in the same order.
  timed "apt-get install the runtime package list into the slim rootfs" \
    chroot "$r" /bin/sh -c "dpkg-query -W libc6 libgcc-s1 libstdc++6 >/dev/null \
      && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
         --no-install-recommends ca-certificates $(tr '\n' ' ' <<<"$list") >/dev/null \
      && apt-get clean && rm -rf /var/lib/apt/lists/* \
      && groupadd --gid 10001 pdserve \
      && useradd --uid 10001 --gid 10001 --home-dir /home/pdserve --create-home \
         --shell /usr/sbin/nologin pdserve \
      && install -d -o 10001 -g 10001 -m 0755 /models"
  cp "${bins[@]/#/$bin_dir/}" "$r/usr/local/bin/"
  local b
  for b in "${bins[@]}"; do
    check "chroot: ldd /usr/local/bin/$b finds every library" \
      bash -c "out=\$(chroot '$r' ldd /usr/local/bin/$b 2>&1) && ! grep -q 'not found' <<<\"\$out\""
    check "chroot: $b --help as uid 10001" \
      chroot --userspec=10001:10001 "$r" "/usr/local/bin/$b" --help >/dev/null
  done
  # The demo on the default model when this machine has it (scripts/fetch-model.sh's cache),
  # else on pdserve's synthetic model.
  local model=${PDSERVE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pdserve}/models/SmolLM2-135M-Instruct.Q4_1.gguf
  local demo_args=""
  if [[ -f "$model" ]]; then
    cp "$model" "$r/models/"
    demo_args="--model /models/SmolLM2-135M-Instruct.Q4_1.gguf"
  fi
  check "chroot: pdserve demo ${demo_args:-(no model file: synthetic model)} as uid 10001" bash -c \
    "chroot --userspec=10001:10001 '$r' env HOME=/home/pdserve /usr/local/bin/pdserve demo \
      $demo_args 2>&1 | tee '$work/demo-chroot.log' \
      | grep -E '^(user|assistant):|finish_reason' >&2 \
      && grep -q 'finish_reason=' '$work/demo-chroot.log'"
  log "chroot rootfs: $(du -sh --exclude=proc --exclude=models "$r" | cut -f1) without the model (the minbase rootfs it was made from: $(du -sh --exclude=proc "$rootfs" | cut -f1))"
  umount "$r/proc"
  trap - EXIT
}

make_rootfs
case "$what" in
  images) images ;;
  chroot) chroot_check ;;
  all)
    chroot_check
    images
    ;;
esac
log "total $((SECONDS - step_start)) s"
if ((fail)); then
  log "some checks FAILED"
  exit 1
fi
log "all checks passed"

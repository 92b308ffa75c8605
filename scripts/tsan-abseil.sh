#!/usr/bin/env bash
# Builds Abseil under ThreadSanitizer for the TSan build (scripts/build.sh tsan). Usage:
#   scripts/tsan-abseil.sh PREFIX      e.g. build-tsan/_deps/absl
#
# Why: absl::Mutex tells TSan about its locks from annotations compiled into mutex.cc, and
# Debian's libabsl is not compiled with -fsanitize=thread, so TSan would see no locking and
# report every ABSL_GUARDED_BY member as racy. This builds the very source of the installed
# libabsl-dev (Debian's source package, same version and Debian patches: inline namespace,
# options.h, SONAMEs libabsl_*.so.20220623) with -fsanitize=thread as shared libraries. Their
# SONAMEs are Debian's, so with them first on the library path (the TSan binaries' RPATH) the
# process loads one Abseil, this one, also for Debian's gRPC that links libabsl_*.so.
#
# The source comes from the Debian archive through apt with a private source list, list
# and cache directory: the system's apt configuration and state are left alone. apt checks the
# files against the archive's signed index. Idempotent: a PREFIX built from the same version
# with the same flags is kept (PREFIX/.pdserve-stamp); anything else is rebuilt from scratch.
set -euo pipefail

prefix=${1:?usage: $0 PREFIX}
mkdir -p "$prefix"
prefix=$(cd "$prefix" && pwd)
jobs=${PDSERVE_JOBS:-$(nproc)}

version=$(dpkg-query -W -f='${source:Version}' libabsl-dev)
cxx=${CXX:-c++}
# As Debian builds it (-O2, NDEBUG unset, C++17), plus TSan; -g1 keeps line tables for reports.
cxxflags="-O2 -g1 -fPIC -fsanitize=thread -fno-omit-frame-pointer"
stamp="abseil $version; $($cxx --version | head -n1); $cxxflags"
if [[ -f "$prefix/.pdserve-stamp" && "$(cat "$prefix/.pdserve-stamp")" == "$stamp" ]]; then
  exit 0
fi

echo "Building Abseil $version with -fsanitize=thread into $prefix"
start=$SECONDS
work="$prefix.work"
rm -rf "$prefix" "$work"
mkdir -p "$work/apt/lists/partial" "$work/apt/cache/archives/partial" "$work/src"

# deb-src entries for the suites the system installs from (see /etc/apt/sources.list.d/).
cat >"$work/apt/debian.sources" <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
apt_opts=(
  -o "Dir::Etc::SourceList=$work/apt/debian.sources" -o Dir::Etc::SourceParts=/nonexistent
  -o "Dir::State::Lists=$work/apt/lists" -o "Dir::Cache=$work/apt/cache"
  # apt's downloader would drop to user _apt, who cannot write the private directories.
  -o APT::Sandbox::User="$(id -un)" -qq
)
apt-get "${apt_opts[@]}" update
(
  cd "$work/src"
  # The installed version; should the archive have moved on (a newer security update of the
  # same LTS, same ABI), its current version.
  if ! apt-get "${apt_opts[@]}" source --download-only "abseil=$version" 2>/dev/null; then
    echo "warning: abseil $version is no longer in the archive; using its current version" >&2
    apt-get "${apt_opts[@]}" source --download-only abseil
  fi
  # apt verified the files against the signed index; unpack and apply Debian's patches.
  dpkg-source --no-check -x ./abseil_*.dsc abseil >/dev/null
)

src="$work/src/abseil"
if ! grep -q 'ABSL_OPTION_INLINE_NAMESPACE_NAME' "$src/absl/base/options.h" ||
   ! cmp -s "$src/absl/base/options.h" /usr/include/absl/base/options.h; then
  echo "error: Abseil's options.h differs from the installed one (ABI would not match)" >&2
  exit 1
fi

cmake -S "$src" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=None \
  -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_CXX_FLAGS="$cxxflags" \
  -DCMAKE_SHARED_LINKER_FLAGS=-fsanitize=thread -DCMAKE_CXX_STANDARD=17 \
  -DBUILD_SHARED_LIBS=ON -DBUILD_TESTING=OFF -DABSL_PROPAGATE_CXX_STD=ON \
  -DCMAKE_INSTALL_PREFIX="$prefix" -DCMAKE_INSTALL_LIBDIR=lib >/dev/null
if ! cmake --build "$work/build" -j "$jobs" >"$work/build.log" 2>&1; then
  tail -n 60 "$work/build.log" >&2
  exit 1
fi
cmake --install "$work/build" >/dev/null
rm -rf "$work"
echo "$stamp" >"$prefix/.pdserve-stamp"
echo "Abseil (TSan) built in $((SECONDS - start)) s"

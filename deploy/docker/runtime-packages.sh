#!/usr/bin/env bash
# Prints the Debian packages that hold the shared libraries BIN... load, one per line, sorted:
# what a runtime image must install for those binaries to start. Run where they were built
# (the image's build stage, or this machine on build/bin), since it asks this system's dpkg:
#
#   deploy/docker/runtime-packages.sh build/bin/pdserve-router build/bin/pdserve-decode ...
#
# For each binary, `ldd` lists every library the loader maps (the transitive closure, as the
# loader resolves it, RUNPATH included); each one's path is looked up with `dpkg-query -S`
# (also its real path, and its other spelling under Debian's merged /usr: /lib/x86_64-linux-gnu
# and /usr/lib/x86_64-linux-gnu are one directory, but dpkg records only one of them).
#
# Fails (exit 1, a line on stderr for each) when a library is "not found", comes from the build
# tree, or belongs to no package: the image could not get it from apt. One exception outside
# --strict: a library in a CUDA toolkit directory that dpkg does not know (a toolkit installed
# from NVIDIA's PyPI wheels or runfile, as on some development machines) is reported as a note
# and left out; in the image's GPU build stage NVIDIA's apt packages own those files, and the
# Dockerfile runs this script with --strict so that they land on the list.
#
# Packages every Debian base image already has are left out: by default libc6, libgcc-s1 and
# libstdc++6 (Essential packages and apt itself depend on them; the Dockerfile checks that the
# runtime base has them). PDSERVE_BASE_PACKAGES="..." replaces that set; --all keeps them.
#
# Options: --strict  also fail on unowned CUDA libraries
#          --all     print the base packages too
#          -v        print "library -> path -> package" for every library on stderr
set -euo pipefail

strict=0
all=0
verbose=0
bins=()
for arg in "$@"; do
  case "$arg" in
    --strict) strict=1 ;;
    --all) all=1 ;;
    -v | --verbose) verbose=1 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    -*)
      echo "runtime-packages.sh: unknown option $arg" >&2
      exit 2
      ;;
    *) bins+=("$arg") ;;
  esac
done
if ((${#bins[@]} == 0)); then
  echo "usage: $0 [--strict] [--all] [-v] BIN..." >&2
  exit 2
fi

read -r -a base_packages <<<"${PDSERVE_BASE_PACKAGES-libc6 libgcc-s1 libstdc++6}"
native_arch=$(dpkg --print-architecture)

errors=0
error() {
  echo "runtime-packages.sh: error: $*" >&2
  errors=$((errors + 1))
}

# PATH, its real path, and each one's other spelling under the merged /usr.
spellings() {
  local path=$1 real c
  real=$(realpath -e -- "$path" 2>/dev/null || echo "$path")
  for c in "$path" "$real"; do
    echo "$c"
    case "$c" in
      /usr/lib/* | /usr/lib64/*) echo "${c#/usr}" ;;
      /lib/* | /lib64/*) echo "/usr$c" ;;
    esac
  done
}

# The build tree a binary sits in: the nearest directory above it with a CMakeCache.txt.
build_tree_of() {
  local d
  d=$(dirname -- "$(realpath -e -- "$1")")
  while [[ "$d" != / ]]; do
    if [[ -f "$d/CMakeCache.txt" ]]; then
      echo "$d"
      return 0
    fi
    d=$(dirname -- "$d")
  done
}

# Pass 1: every library each binary loads (name, path), checked for "not found" and the build
# tree.
declare -A lib_name=()  # path -> soname, in first-seen order below
libs=()
for bin in "${bins[@]}"; do
  if [[ ! -f "$bin" ]]; then
    error "$bin: no such file"
    continue
  fi
  build_tree=$(build_tree_of "$bin")
  if ! lines=$(LC_ALL=C ldd -- "$bin" 2>&1); then
    error "$bin: ldd failed: $lines"
    continue
  fi
  if grep -q 'not a dynamic executable' <<<"$lines"; then
    error "$bin: not a dynamic executable"
    continue
  fi
  while IFS= read -r line; do
    line=${line#"${line%%[![:space:]]*}"}  # trim leading white space
    [[ -z "$line" ]] && continue
    if [[ "$line" == *"=> not found"* ]]; then
      error "$bin: ${line%% *} not found"
      continue
    fi
    if [[ "$line" == *" => "* ]]; then
      name=${line%% => *}
      rest=${line#* => }
      path=${rest%% (*}
    else
      name=${line%% (*}
      path=$name
    fi
    [[ "$path" != /* ]] && continue  # the vDSO is the kernel's, not a file
    real=$(realpath -e -- "$path" 2>/dev/null || echo "$path")
    if [[ -n "$build_tree" && "$real" == "$build_tree"/* ]]; then
      error "$bin: $name => $path comes from the build tree $build_tree, which no image has"
      continue
    fi
    if [[ -z "${lib_name[$path]:-}" ]]; then
      lib_name[$path]=$name
      libs+=("$path")
    fi
  done <<<"$lines"
done

# Pass 2: owners, with one dpkg-query for all spellings of all paths ("pkg[:arch][, pkg2...]:
# PATH" per owned path; "diversion by ..." lines name no owner).
declare -A owner_of=()
if ((${#libs[@]} > 0)); then
  mapfile -t candidates < <(for p in "${libs[@]}"; do spellings "$p"; done | sort -u)
  while IFS= read -r line; do
    [[ "$line" == "diversion "* || "$line" != *": /"* ]] && continue
    pkg=${line%%: /*}
    pkg=${pkg%%,*}
    owner_of["/${line#*: /}"]=${pkg%:"$native_arch"}
  done < <(dpkg-query -S -- "${candidates[@]}" 2>/dev/null || true)
fi

declare -A packages=()
for path in "${libs[@]}"; do
  name=${lib_name[$path]}
  pkg=""
  while IFS= read -r c; do
    if [[ -n "${owner_of[$c]:-}" ]]; then
      pkg=${owner_of[$c]}
      break
    fi
  done < <(spellings "$path")
  if [[ -z "$pkg" ]]; then
    real=$(realpath -e -- "$path" 2>/dev/null || echo "$path")
    if ((!strict)) && [[ "$real" =~ /cuda[^/]*/ ]]; then
      echo "runtime-packages.sh: note: $name => $path is a CUDA toolkit library no Debian" \
        "package owns here; left out (the GPU image's build stage installs NVIDIA's" \
        "packages, which own it)" >&2
      continue
    fi
    error "$name => $path belongs to no Debian package"
    continue
  fi
  ((verbose)) && printf '%-45s %-70s %s\n' "$name" "$path" "$pkg" >&2
  packages[$pkg]=1
done

if ((errors > 0)); then
  echo "runtime-packages.sh: $errors error(s); no package list printed" >&2
  exit 1
fi

if ((!all)); then
  for b in "${base_packages[@]}"; do unset "packages[$b]"; done
fi
if ((${#packages[@]} > 0)); then
  printf '%s\n' "${!packages[@]}" | LC_ALL=C sort
fi

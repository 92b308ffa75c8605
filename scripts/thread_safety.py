#!/usr/bin/env python3
"""Clang's -Wthread-safety over every source file whose shared state is an absl::Mutex with
ABSL_GUARDED_BY: the compiler checks that each guarded member is touched only under its lock.
GCC (the main build) ignores the annotations, so this runs clang-14 in syntax-only mode with
the flags the build used (from its compile_commands.json). Usage:
    scripts/thread_safety.py BUILD_DIR
Exits non-zero on any thread-safety warning."""
import json
import os
import shlex
import subprocess
import sys


def main():
    build = sys.argv[1] if len(sys.argv) > 1 else "build"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(build, "compile_commands.json")) as f:
        commands = json.load(f)
    checked, failed = 0, []
    for entry in commands:
        path = os.path.relpath(entry["file"], root)
        if path.startswith(("build", "tests/", "..")) or not path.endswith(".cc"):
            continue
        sources = [os.path.join(root, path), os.path.join(root, path[:-3] + ".h")]
        text = "".join(open(s).read() for s in sources if os.path.exists(s))
        if "ABSL_GUARDED_BY" not in text:
            continue
        args, skip = [], False
        for arg in shlex.split(entry["command"])[1:]:
            if skip:
                skip = False
            elif arg in ("-o", "-MF", "-MT"):
                skip = True
            elif arg not in ("-c", "-MD") and not arg.startswith("-march"):
                args.append(arg)
        cmd = ["clang++-14", *args, "-fsyntax-only", "-march=x86-64-v2",
               "-Wno-unknown-warning-option", "-Wno-error", "-Wthread-safety",
               "-Werror=thread-safety"]
        result = subprocess.run(cmd, cwd=entry["directory"], capture_output=True, text=True)
        checked += 1
        if result.returncode != 0:
            failed.append(path)
            print(result.stderr, file=sys.stderr)
    print(f"thread safety: {checked} files checked with clang -Wthread-safety, "
          f"{len(failed)} failed {failed if failed else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

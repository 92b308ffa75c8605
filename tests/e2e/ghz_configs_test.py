#!/usr/bin/env python3
"""The ghz configs in deploy/ghz/ work as the README says.

Always (no ghz needed): every config parses, names a method that the protoset CMake builds
(build/pdserve.protoset) declares, and its call data names only fields of that method's request
message (nested messages and repeated fields included), with balanced {{ }} templates.

With a real ghz (on the PATH, or ../shared/tools/ghz): a router, a prefill and a decode worker
serve the default model with its tokenizer; each config runs twice, over server reflection and
with --protoset, with a small -n; ghz's JSON report must count every call OK; and the router's
log must show the request ids the template made, one per request, so the call data does vary.

Usage: ghz_configs_test.py --bin-dir build/bin --model DEFAULT.gguf --protoset build/pdserve.protoset
"""

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from cluster import Cluster, wait_serving  # noqa: E402

from google.protobuf import descriptor_pb2, descriptor_pool  # noqa: E402

CONFIGS = sorted(glob.glob(os.path.join(ROOT, "deploy", "ghz", "*.json")))
CALLS = 4  # per config and way (reflection, protoset): enough to see the templates vary


def load_pool(protoset):
    files = descriptor_pb2.FileDescriptorSet()
    with open(protoset, "rb") as f:
        files.ParseFromString(f.read())
    pool = descriptor_pool.DescriptorPool()
    for f in files.file:  # --include_imports lists imports first
        pool.Add(f)
    return pool


def check_fields(value, message, where, problems):
    """`value` (JSON) only names fields of `message`, recursively."""
    if not isinstance(value, dict):
        problems.append(f"{where}: expected an object for {message.full_name}")
        return
    for key, item in value.items():
        field = message.fields_by_name.get(key) or message.fields_by_camelcase_name.get(key)
        if field is None:
            problems.append(f"{where}: {message.full_name} has no field {key!r}")
            continue
        repeated = field.is_repeated
        items = item if repeated else [item]
        if repeated and not isinstance(item, list):
            problems.append(f"{where}.{key}: repeated, expected a list")
            continue
        for i, element in enumerate(items):
            if field.message_type is not None:
                check_fields(element, field.message_type, f"{where}.{key}[{i}]", problems)


def static_checks(pool):
    problems = []
    if not CONFIGS:
        problems.append("no configs in deploy/ghz/")
    for path in CONFIGS:
        name = os.path.relpath(path, ROOT)
        with open(path) as f:
            text = f.read()
        config = json.loads(text)
        if text.count("{{") != text.count("}}"):
            problems.append(f"{name}: unbalanced {{{{ }}}} templates")
        service, _, method = config.get("call", "").rpartition(".")
        try:
            descriptor = pool.FindServiceByName(service).methods_by_name[method]
        except KeyError:
            problems.append(f"{name}: call {config.get('call')!r} is not in the protoset")
            continue
        check_fields(config.get("data"), descriptor.input_type, f"{name}: data", problems)
        print(f"  {name}: {config['call']}, data fields exist in {descriptor.input_type.full_name}")
    return problems


def find_ghz():
    return shutil.which("ghz") or next(
        (p for p in [os.path.join(ROOT, "..", "shared", "tools", "ghz")]
         if os.access(p, os.X_OK)), None)


def live_checks(args, ghz):
    problems = []
    with Cluster(args.bin_dir, args.model, router_args=["--tokenizer=" + args.model],
                 threads=1, name="ghz") as cluster:
        wait_serving(cluster.router)
        for path in CONFIGS:
            name = os.path.relpath(path, ROOT)
            for way, extra in (("reflection", []), ("protoset", ["--protoset", args.protoset])):
                run = subprocess.run([ghz, "--config", path, "-n", str(CALLS), "-c", "2",
                                      "--format", "json", *extra, cluster.router],
                                     capture_output=True, text=True, timeout=600)
                if run.returncode != 0:
                    problems.append(f"{name} ({way}): ghz exited {run.returncode}: "
                                    f"{run.stderr[-500:]}")
                    continue
                report = json.loads(run.stdout)
                codes = report.get("statusCodeDistribution")
                if codes != {"OK": CALLS}:
                    problems.append(f"{name} ({way}): status codes {codes}, errors "
                                    f"{report.get('errorDistribution')}; want OK x {CALLS}")
                print(f"  {name} over {way}: {codes}, mean "
                      f"{report.get('average', 0) / 1e6:.0f} ms")
            with open(cluster.log("router"), errors="replace") as f:
                log = f.read()
            with open(path) as f:
                template = json.load(f)["data"]["request_id"]
            ids = {template.replace("{{.RequestNumber}}", str(i)) for i in range(CALLS)}
            missing = [i for i in sorted(ids) if not re.search(rf"request {re.escape(i)}: ok", log)]
            if missing:
                problems.append(f"{name}: the router logged no finished request {missing}")
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin-dir", required=True)
    parser.add_argument("--model", required=True, help="the default GGUF (it has a tokenizer)")
    parser.add_argument("--protoset", required=True)
    args = parser.parse_args()
    problems = static_checks(load_pool(args.protoset))
    ghz = find_ghz()
    if ghz is None:
        print("ghz_configs_test: no ghz on the PATH or in ../shared/tools: the configs were "
              "checked against the protoset, not run")
    elif not problems:
        problems += live_checks(args, ghz)
    if problems:
        for p in problems:
            print(f"FAIL: {p}", file=sys.stderr)
        return 1
    print(f"ghz_configs_test: {len(CONFIGS)} configs passed" +
          ("" if ghz is None else f", each run over reflection and with --protoset ({ghz})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

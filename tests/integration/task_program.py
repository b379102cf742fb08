#!/usr/bin/python3
"""The task the integration tests run on the cluster (fractal calling form).

Arguments select what it does: {"x": n} -> {"square": n*n}; "fail": exit status; "sleep": s;
"env": [names] -> their values; "alloc_mb": touch that much memory; "whoami": the user;
"oom_first": the OOM killer takes the job's other processes (the worker) before this one, so the
job dies with its files silent; "sleep_again": s, sleep this instead of "sleep" in a later
attempt of the same task (a retry: a marker beside its --out-json says it ran before).
"""

import argparse
import json
import os
import pwd
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--args-json", required=True)
parser.add_argument("--out-json", required=True)
ns = parser.parse_args()
with open(ns.args_json) as fh:
    args = json.load(fh)
out = {}
print("task args:", args, flush=True)
marker = f"{ns.out_json}.tried"
if "sleep_again" in args and os.path.exists(marker):
    time.sleep(float(args["sleep_again"]))
elif "sleep" in args:
    if "sleep_again" in args:
        open(marker, "w").close()
    time.sleep(float(args["sleep"]))
if args.get("oom_first"):
    # Raising another process's oom_score_adj is allowed to its owner: every ancestor of the
    # same user (the worker, the batch shell) goes first when the job's memory runs out.
    pid = os.getppid()
    while pid > 1 and os.stat(f"/proc/{pid}").st_uid == os.getuid():
        with open(f"/proc/{pid}/oom_score_adj", "w") as fh:
            fh.write("1000")
        with open(f"/proc/{pid}/stat") as fh:
            pid = int(fh.read().rsplit(")", 1)[1].split()[1])
if "alloc_mb" in args:
    block = bytearray(int(args["alloc_mb"]) * 1024 * 1024)
    for k in range(0, len(block), 4096):
        block[k] = 1
    out["allocated_mb"] = args["alloc_mb"]
if "fail" in args:
    print(f"failing on purpose with status {args['fail']}", file=sys.stderr, flush=True)
    sys.exit(int(args["fail"]))
if "x" in args:
    out["square"] = args["x"] * args["x"]
if "env" in args:
    out["env"] = {name: os.environ.get(name) for name in args["env"]}
if args.get("whoami"):
    out["user"] = pwd.getpwuid(os.getuid()).pw_name
with open(ns.out_json, "w") as fh:
    json.dump(out, fh)

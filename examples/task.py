#!/usr/bin/env python3
"""An example task in the fractal calling form: --args-json IN --out-json OUT.

Arguments: {"x": number, "fail": optional exit status, "sleep": optional seconds}.
Result: {"x": x, "square": x*x}.
"""

import argparse
import json
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--args-json", required=True)
parser.add_argument("--out-json", required=True)
ns = parser.parse_args()
with open(ns.args_json) as fh:
    args = json.load(fh)
print(f"task got {args}")
if args.get("sleep"):
    time.sleep(float(args["sleep"]))
if args.get("fail"):
    print(f"failing on purpose with status {args['fail']}", file=sys.stderr)
    sys.exit(int(args["fail"]))
x = args.get("x", 0)
with open(ns.out_json, "w") as fh:
    json.dump({"x": x, "square": x * x}, fh)

#!/usr/bin/env python3
"""Regenerates src/ocpp/v201/schemas.json: the official OCPP 2.0.1 JSON schemas (OCA,
as shipped in PyPI `ocpp` 2.1.0, MIT, under ocpp/v201/schemas/), one object per message
keyed by file name without `.json`, with descriptions and other annotations dropped.

    pip download ocpp==2.1.0 --no-deps -d /tmp/ocpp && (cd /tmp/ocpp && unzip -qo *.whl)
    python3 tools/v201-schemas.py /tmp/ocpp/ocpp/v201/schemas > src/ocpp/v201/schemas.json
"""
import glob
import json
import os
import sys

DROP = {"description", "comment", "javaType", "$id", "$schema", "tsEnumNames", "$comment"}


def strip(o):
    if isinstance(o, dict):
        return {k: strip(v) for k, v in o.items() if k not in DROP}
    if isinstance(o, list):
        return [strip(x) for x in o]
    return o


def main(src):
    out = {}
    for path in sorted(glob.glob(os.path.join(src, "*.json"))):
        name = os.path.basename(path)[: -len(".json")]
        with open(path, encoding="utf-8-sig") as f:
            out[name] = strip(json.load(f))
    json.dump(out, sys.stdout, separators=(",", ":"), sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])

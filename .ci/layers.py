#!/usr/bin/env python3
"""Fails when a module of the chargesite library imports one of a higher layer.

The layers, lowest first (README "Layout"): plain types; pure cores; the session core;
pure protocol and contract code and the typed config; the store driver; the OCPP driver; the uplink and status
drivers;
process wiring. An import may point down or sideways within its layer, never up, so the
arrows of the tree run one way: main -> agent -> drivers -> pure cores -> types.

Test modules (from `#[cfg(test)]` on) are not checked: a test may build its inputs with
whatever is at hand. Run from the repository root: `python3 .ci/layers.py`.
"""

import pathlib
import re
import sys

# (module path prefix, layer). The longest matching prefix names a module's layer.
LAYERS = [
    ("time", 0), ("reading", 0), ("password", 0), ("metrics", 0),
    ("billing", 1), ("auth", 1), ("power", 1), ("reservation", 1),
    ("session", 2),
    ("events", 3), ("notice", 3), ("config", 3),
    ("ocpp::frame", 3), ("ocpp::messages", 3), ("ocpp::meter", 3),
    ("ocpp::handshake", 3), ("ocpp::rpc", 3), ("ocpp::binding", 3), ("ocpp::guard", 3),
    ("pki", 3),
    ("ocpp::v201::messages", 3), ("ocpp::v201::schema", 3),
    ("uplink::batch", 3), ("uplink::delivery", 3),
    ("status::view", 3), ("status::gate", 3), ("status::routes", 3), ("status::summary", 3),
    ("status::page", 3),
    ("store", 4),
    ("ocpp", 5),
    ("uplink", 6), ("status", 6),
    ("agent", 7), ("demo", 7), ("broker", 7), ("sim", 7),
]
NAMES = ["types", "pure cores", "session core", "pure protocol, contract and config", "store driver",
         "ocpp driver", "uplink and status drivers", "process wiring"]


def layer(module):
    best = None
    for prefix, rank in LAYERS:
        if module == prefix or module.startswith(prefix + "::"):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, rank)
    return None if best is None else best[1]


def module_of(path):
    parts = list(path.relative_to("src").with_suffix("").parts)
    if parts[-1] == "mod":
        parts.pop()
    return "::".join(parts)


IMPORT = re.compile(r"\b(crate|super)((?:::[a-z_][a-z0-9_]*)+)")


def imports(text, module):
    """Module paths named by `crate::a::b` or `super::a` (resolved), outside tests."""
    cut = re.search(r"^\s*#\[cfg\(test\)\]\s*\n\s*mod ", text, re.M)
    if cut:
        text = text[: cut.start()]
    for line_no, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("//"):
            continue
        for m in IMPORT.finditer(line):
            segs = m.group(2).strip(":").split("::")
            if m.group(1) == "super":
                # `super` of module a::b is a (a `mod.rs` file is its directory's module)
                base = module.split("::")[:-1]
                yield line_no, "::".join(base + segs)
            else:
                yield line_no, "::".join(segs)


def main():
    root = pathlib.Path("src")
    errors = []
    for path in sorted(root.rglob("*.rs")):
        if path.name in ("main.rs", "lib.rs"):
            continue
        module = module_of(path)
        own = layer(module)
        if own is None:
            errors.append(f"{path}: module {module} has no layer in .ci/layers.py")
            continue
        for line_no, target in imports(path.read_text(), module):
            # `crate::x::Item`: the longest known module prefix decides
            rank = layer(target)
            if rank is None:
                continue
            if rank > own:
                errors.append(
                    f"{path}:{line_no}: {module} ({NAMES[own]}) imports {target} "
                    f"({NAMES[rank]}): an upward import"
                )
    for e in errors:
        print(e)
    if errors:
        print(f"layers: {len(errors)} violation(s)")
        return 1
    print("layers: every import points down or sideways")
    return 0


if __name__ == "__main__":
    sys.exit(main())

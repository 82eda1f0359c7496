#!/usr/bin/env python3
"""Fails when a crate of the workspace names a dependency its code never uses.

A dependency counts as used when its crate name (dashes as underscores) appears as a path in the
crate's Rust sources: `name::`, `use name`, `name!`, `extern crate name`. Each allowed exception
is listed below with its reason. Run by scripts/test.sh; `python3 scripts/unused-deps.py`.
"""
import pathlib
import re
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent

# (crate, dependency): why it is there though no path names it.
ALLOWED = {
    ("dash-discovery", "dash-discovery"): "itself with the `testing` feature, for its tests",
}


def rust_sources(crate_dir):
    for sub in ["src", "tests", "benches", "examples"]:
        yield from (crate_dir / sub).rglob("*.rs")
    build = crate_dir / "build.rs"
    if build.exists():
        yield build


def main():
    unused = []
    for manifest in sorted(ROOT.glob("crates/*/Cargo.toml")):
        crate_dir = manifest.parent
        spec = tomllib.loads(manifest.read_text())
        name = spec["package"]["name"]
        text = "\n".join(path.read_text() for path in rust_sources(crate_dir))
        for table in ["dependencies", "dev-dependencies", "build-dependencies"]:
            for dep, value in spec.get(table, {}).items():
                package = value.get("package", dep) if isinstance(value, dict) else dep
                ident = dep.replace("-", "_")
                if (name, dep) in ALLOWED:
                    continue
                if re.search(rf"(?<![\w:])(?:{ident}\s*::|{ident}\s*!|use\s+{ident}\b|extern\s+crate\s+{ident}\b)", text):
                    continue
                unused.append(f"{name}: [{table}] {dep}" + (f" (package {package})" if package != dep else ""))
    if unused:
        print("dependencies named in Cargo.toml but never used in the crate's code:")
        for line in unused:
            print("  " + line)
        print("remove them, or add them to ALLOWED in scripts/unused-deps.py with the reason")
        return 1
    print("no unused dependencies")
    return 0


if __name__ == "__main__":
    sys.exit(main())

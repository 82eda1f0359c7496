#!/usr/bin/env python3
"""Checks fly.toml offline: against the configuration schema Fly documents and flyctl accepts
(the keys, their types and the limits Fly documents and flyctl enforces, for every table Dash
uses), against the
mistakes flyctl lets through silently (a `processes` entry naming no group drops a mount, a VM
size or a check without a word), and against Dash's own settings (ports, the data directory,
the shutdown deadline). `--self-test` breaks a copy in the ways this catches and checks that
each is caught. What cannot be checked offline is listed in docs/DEPLOY.md.

Sources of the schema (facts, as of flyctl's internal/appconfig and Fly's configuration
reference): durations are strings with a unit ("30s"); a bare integer kill_timeout means
seconds, a bare integer in [checks] milliseconds, elsewhere it is unreliable, so this refuses
bare integers everywhere; auto_stop_machines is a bool or "off", "stop", "suspend"; top-level
checks need type http or tcp, an interval of at least 2 s and a timeout of at most 60 s;
kill_timeout is at most 300 s; a group may have one [[mounts]]; canary deploys refuse mounts and
bluegreen does not work with them.
"""

import copy
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

STR, INT, BOOL, LIST, TABLE, DURATION, SIZE = "string", "integer", "boolean", "list", "table", "duration", "size"
SCHEMA = {
    "": {
        "app": STR, "primary_region": STR, "kill_signal": STR, "kill_timeout": DURATION,
        "swap_size_mb": INT, "console_command": STR, "build": TABLE, "deploy": TABLE, "env": TABLE,
        "processes": TABLE, "http_service": TABLE, "checks": TABLE, "mounts": LIST, "vm": LIST,
        "metrics": LIST, "services": LIST, "statics": LIST, "files": LIST, "restart": LIST,
        "experimental": TABLE, "host_dedication_id": STR,
    },
    "build": {"builder": STR, "image": STR, "dockerfile": STR, "ignorefile": STR, "build-target": STR,
              "buildpacks": LIST, "args": TABLE},
    "deploy": {"release_command": STR, "release_command_timeout": DURATION, "strategy": STR,
               "max_unavailable": (INT, float), "wait_timeout": DURATION},
    "http_service": {"internal_port": INT, "force_https": BOOL, "auto_stop_machines": (BOOL, STR),
                     "auto_start_machines": BOOL, "min_machines_running": INT, "processes": LIST,
                     "concurrency": TABLE, "checks": LIST, "tls_options": TABLE, "http_options": TABLE},
    "http_service.concurrency": {"type": STR, "soft_limit": INT, "hard_limit": INT},
    "http_service.checks": {"grace_period": DURATION, "interval": DURATION, "timeout": DURATION,
                            "method": STR, "path": STR, "protocol": STR, "tls_server_name": STR,
                            "tls_skip_verify": BOOL, "headers": TABLE},
    "checks.*": {"type": STR, "port": INT, "interval": DURATION, "timeout": DURATION,
                 "grace_period": DURATION, "method": STR, "path": STR, "protocol": STR,
                 "tls_server_name": STR, "tls_skip_verify": BOOL, "headers": TABLE, "processes": LIST},
    "mounts": {"source": STR, "destination": STR, "processes": LIST, "initial_size": SIZE,
               "snapshot_retention": INT, "auto_extend_size_threshold": INT,
               "auto_extend_size_increment": SIZE, "auto_extend_size_limit": SIZE},
    "vm": {"size": STR, "memory": SIZE, "cpus": INT, "cpu_kind": STR, "memory_mb": INT, "gpus": INT,
           "gpu_kind": STR, "host_dedication_id": STR, "processes": LIST},
    "metrics": {"port": INT, "path": STR, "https": BOOL, "processes": LIST},
}
PYTHON_TYPES = {STR: str, INT: int, BOOL: bool, LIST: list, TABLE: dict, DURATION: str, SIZE: (str, int)}
UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


def seconds(text):
    """A Go duration ("30s", "1m30s", "500ms") in seconds, or None."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * UNIT[u] for n, u in parts)


def bytes_of(text, default_unit=""):
    """A size in bytes: "4GiB" as Dash's settings write it, "10gb", "10G" or a bare number of
    `default_unit` as fly.toml's initial_size takes it (decimal units)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?", str(text).strip().lower())
    if not match:
        return None
    unit = match[2] or default_unit.lower()
    power = "kmgt".index(unit) + 1 if unit else 0
    return float(match[1]) * (1024 if match[3] else 1000) ** power


def check_table(errors, where, table, schema):
    for key, value in table.items():
        if key not in schema:
            errors.append(f"{where or 'top level'}: unknown key {key!r}")
            continue
        kinds = schema[key] if isinstance(schema[key], tuple) else (schema[key],)
        python = tuple(PYTHON_TYPES.get(k, k) for k in kinds)
        # TOML's booleans are not integers, whatever Python says.
        if not isinstance(value, python) or (isinstance(value, bool) and BOOL not in kinds):
            errors.append(f"{where}.{key}: expected {' or '.join(str(k) for k in kinds)}, got {value!r}")
        elif DURATION in kinds and seconds(value) is None:
            errors.append(f"{where}.{key}: {value!r} is not a duration with a unit (\"30s\")")


def check(config, production):
    errors = []
    check_table(errors, "", config, SCHEMA[""])
    for section in ("build", "deploy", "http_service"):
        check_table(errors, section, config.get(section, {}), SCHEMA[section])
    service = config.get("http_service", {})
    check_table(errors, "http_service.concurrency", service.get("concurrency", {}), SCHEMA["http_service.concurrency"])
    for i, item in enumerate(service.get("checks", [])):
        check_table(errors, f"http_service.checks[{i}]", item, SCHEMA["http_service.checks"])
    for name, item in config.get("checks", {}).items():
        check_table(errors, f"checks.{name}", item, SCHEMA["checks.*"])
    for section in ("mounts", "vm", "metrics"):
        for i, item in enumerate(config.get(section, [])):
            check_table(errors, f"{section}[{i}]", item, SCHEMA[section])
    if errors:
        return errors  # the rest reads the tables as the schema says they are

    # Limits flyctl enforces.
    if seconds(config.get("kill_timeout", "5s")) > 300:
        errors.append("kill_timeout: at most 300s")
    strategy = config.get("deploy", {}).get("strategy", "rolling")
    if strategy not in ("rolling", "immediate", "canary", "bluegreen"):
        errors.append(f"deploy.strategy: {strategy!r} is not rolling, immediate, canary or bluegreen")
    if strategy in ("canary", "bluegreen") and config.get("mounts"):
        errors.append(f"deploy.strategy: {strategy} does not work with volumes")
    if service.get("auto_stop_machines") not in (None, True, False, "off", "stop", "suspend"):
        errors.append("http_service.auto_stop_machines: true, false, \"off\", \"stop\" or \"suspend\"")
    concurrency = service.get("concurrency", {})
    if concurrency.get("type", "connections") not in ("connections", "requests"):
        errors.append("http_service.concurrency.type: connections or requests")
    if concurrency.get("soft_limit", 0) > concurrency.get("hard_limit", 1 << 62):
        errors.append("http_service.concurrency: soft_limit above hard_limit")
    for name, item in config.get("checks", {}).items():
        if item.get("type") not in ("http", "tcp"):
            errors.append(f"checks.{name}.type: http or tcp")
        if seconds(item.get("interval", "15s")) < 2:
            errors.append(f"checks.{name}.interval: at least 2s")
        if seconds(item.get("timeout", "2s")) > 60:
            errors.append(f"checks.{name}.timeout: at most 60s")
    for key in config.get("env", {}):
        if key.startswith("FLY_"):
            errors.append(f"env.{key}: names beginning with FLY_ are Fly's")

    # Process groups: every reference names one. flyctl refuses an unknown group only on a
    # service; on a mount, a VM or a check it drops the entry without a word.
    groups = set(config.get("processes", {})) or {"app"}
    references = [("http_service", service)] if service else []
    references += [(f"checks.{n}", c) for n, c in config.get("checks", {}).items()]
    references += [(f"{s}[{i}]", t) for s in ("mounts", "vm", "metrics") for i, t in enumerate(config.get(s, []))]
    for where, table in references:
        for group in table.get("processes", []):
            if group not in groups:
                errors.append(f"{where}.processes: no process group {group!r} (groups: {sorted(groups)})")
    if service and config.get("processes") and not service.get("processes"):
        errors.append("http_service: set processes (the app has process groups)")
    for group in sorted(groups):
        vms = [v for v in config.get("vm", []) if group in v.get("processes", [])]
        defaults = [v for v in config.get("vm", []) if not v.get("processes")]
        if len(vms) > 1 or (not vms and len(defaults) != 1):
            errors.append(f"[[vm]]: group {group!r} needs exactly one machine size")
        mounts = [m for m in config.get("mounts", []) if group in m.get("processes", [group])]
        if len(mounts) > 1:
            errors.append(f"[[mounts]]: group {group!r} has more than one")

    # Dash's own contract.
    listen_port = int(production["listen"].rsplit(":", 1)[1])
    if not production["listen"].startswith("[::]:"):
        errors.append("config/production.toml listen: [::] (Fly's private network is IPv6)")
    if service.get("internal_port") != listen_port:
        errors.append(f"http_service.internal_port: dashd listens on {listen_port} in production")
    for name, item in config.get("checks", {}).items():
        if item.get("port") != listen_port:
            errors.append(f"checks.{name}.port: dashd listens on {listen_port} in production")
    paths = [c.get("path") for c in service.get("checks", [])] + [c.get("path") for c in config.get("checks", {}).values()]
    for path in paths:
        if path not in ("/health", "/ready"):
            errors.append(f"a check on {path!r}: Dash's probes are /health and /ready")
    shutdown = seconds(production["shutdown_timeout"])
    if seconds(config.get("kill_timeout", "5s")) <= shutdown:
        errors.append(f"kill_timeout: must exceed shutdown_timeout ({production['shutdown_timeout']}), or buffers are cut off")
    if config.get("kill_signal") not in ("SIGTERM", "SIGINT"):
        errors.append("kill_signal: SIGTERM (dashd drains on SIGTERM and SIGINT)")
    if config.get("deploy", {}).get("release_command", "").split() != ["dashd", "migrate"]:
        errors.append("deploy.release_command: dashd migrate")
    for group, command in config.get("processes", {}).items():
        if command.split() != ["serve", "--role", group]:
            errors.append(f"processes.{group}: expected 'serve --role {group}'")
    ingestor_mounts = [m for m in config.get("mounts", []) if "ingestor" in m.get("processes", ["ingestor"])]
    if not ingestor_mounts or ingestor_mounts[0]["destination"] != production["data_dir"]:
        errors.append(f"[[mounts]]: ingestors need their volume at {production['data_dir']} (the intake log)")
    elif "initial_size" in ingestor_mounts[0]:
        size = ingestor_mounts[0]["initial_size"]
        volume = bytes_of(size, default_unit="g")
        if volume is None:
            errors.append(f"[[mounts]]: initial_size {size!r} is not a size")
        elif volume <= bytes_of(production["spool_max"]):
            errors.append(f"[[mounts]]: initial_size {size} leaves no room above spool_max {production['spool_max']}")
    return errors


def self_test(config, production):
    """Each way of breaking fly.toml that check() is there for, and that it catches it."""
    def broken(change):
        copied = copy.deepcopy(config)
        change(copied)
        return copied
    # (the change, a piece of the error it must cause)
    cases = [
        (lambda c: c["http_service"].update(intenral_port=8080), "unknown key 'intenral_port'"),
        (lambda c: c["checks"]["ingestor_alive"].update(interval=10), "checks.ingestor_alive.interval: expected"),
        (lambda c: c["mounts"][0].update(processes=["ingestors"]), "mounts[0].processes: no process group"),
        (lambda c: c["vm"].pop(), "group 'ingestor' needs exactly one machine size"),
        (lambda c: c.update(kill_timeout="20s"), "kill_timeout: must exceed shutdown_timeout"),
        (lambda c: c["checks"]["ingestor_ready"].update(port=80), "checks.ingestor_ready.port"),
        (lambda c: c["deploy"].update(release_command="dashd serve"), "deploy.release_command"),
        (lambda c: c["deploy"].update(strategy="canary"), "canary does not work with volumes"),
        (lambda c: c["checks"]["ingestor_alive"].update(interval="1s"), "interval: at least 2s"),
        (lambda c: c["http_service"].update(auto_stop_machines="never"), "auto_stop_machines"),
        (lambda c: c["mounts"][0].update(initial_size="4GB"), "leaves no room above spool_max"),
        (lambda c: c["mounts"][0].update(initial_size=3), "leaves no room above spool_max"),
        (lambda c: c["processes"].update(web="serve --role all"), "processes.web"),
    ]
    missed = []
    for change, expected in cases:
        errors = check(broken(change), production)
        if not any(expected in error for error in errors):
            missed.append(f"{expected!r} (got {errors})")
    for case in missed:
        print(f"check-fly --self-test: not caught: {case}", file=sys.stderr)
    return not missed


def main():
    config = tomllib.loads((ROOT / "fly.toml").read_text())
    production = tomllib.loads((ROOT / "config/production.toml").read_text())
    errors = check(config, production)
    for error in errors:
        print(f"fly.toml: {error}", file=sys.stderr)
    if errors:
        return 1
    if "--self-test" in sys.argv and not self_test(config, production):
        return 1
    print("fly.toml: matches Fly's schema, its process groups and Dash's settings")
    return 0


if __name__ == "__main__":
    sys.exit(main())

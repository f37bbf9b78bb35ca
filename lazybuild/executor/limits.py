"""Fit a spec's rlimits to what this process may hand out.

Raising a hard limit above our own needs CAP_SYS_RESOURCE. Without it (a sandboxed
"root", as on some CI runners) runc fails with "error setting rlimit ... operation
not permitted" before the process starts, so such limits are capped at ours.
"""

from __future__ import annotations

import resource
from typing import Any

_CAP_SYS_RESOURCE = 24


def may_raise_hard_limits() -> bool:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_SYS_RESOURCE & 1)
    except OSError:
        pass
    return False


def fit_rlimits(spec: dict[str, Any]) -> dict[str, Any]:
    """`spec` with rlimits no higher than ours when we cannot raise them (a copy)."""
    process = spec.get("process", {})
    if not process.get("rlimits") or may_raise_hard_limits():
        return spec
    fitted = []
    for limit in process["rlimits"]:
        which = getattr(resource, str(limit.get("type")), None)
        if not isinstance(which, int):
            fitted.append(limit)  # unknown to Python: let runc judge it
            continue
        _, our_hard = resource.getrlimit(which)
        hard = limit["hard"] if our_hard == resource.RLIM_INFINITY else min(limit["hard"], our_hard)
        fitted.append({**limit, "hard": hard, "soft": min(limit["soft"], hard)})
    return {**spec, "process": {**process, "rlimits": fitted}}

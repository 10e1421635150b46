"""The coverage report: per task native / fallback / unsupported with the reason, totals per role and tree."""

from __future__ import annotations

import json
from typing import Any

from converters.convert import Conversion

STATUSES = ("native", "fallback", "unsupported")


def as_json(conversions: list[Conversion]) -> str:
    return json.dumps(_data(conversions), indent=2) + "\n"


def _data(conversions: list[Conversion]) -> dict[str, Any]:
    roles = []
    totals = {status: 0 for status in STATUSES} | {"tasks": 0, "roles": len(conversions), "unreadable": 0}
    for conversion in conversions:
        entry: dict[str, Any] = {"role": conversion.role, "path": str(conversion.path)}
        if conversion.error:
            entry["error"] = conversion.error
            totals["unreadable"] += 1
        else:
            entry["totals"] = conversion.totals()
            entry["tasks"] = [row.to_wire() for row in conversion.rows]
            for key, value in entry["totals"].items():
                totals[key] += value
        roles.append(entry)
    totals["native_percent"] = round(100 * totals["native"] / totals["tasks"], 1) if totals["tasks"] else 0.0
    return {"roles": roles, "totals": totals}


def as_markdown(conversions: list[Conversion]) -> str:
    data = _data(conversions)
    lines = ["# convert-role coverage", ""]
    for role in data["roles"]:
        lines.append(f"## {role['role']}")
        lines.append("")
        if "error" in role:
            lines.extend([f"Not converted: {role['error']}", ""])
            continue
        totals = role["totals"]
        lines.append(f"{totals['tasks']} tasks: {totals['native']} native, {totals['fallback']} fallback, "
                     f"{totals['unsupported']} unsupported")
        lines.extend(["", "| task | source | module | status | reason |", "|---|---|---|---|---|"])
        for row in role["tasks"]:
            cells = [row["id"], row["source"], row["module"], row["status"], row["reason"]]
            lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
        lines.append("")
    totals = data["totals"]
    lines.append(f"**Total**: {totals['roles']} roles ({totals['unreadable']} unreadable), {totals['tasks']} tasks: "
                 f"{totals['native']} native ({totals['native_percent']}%), {totals['fallback']} fallback, "
                 f"{totals['unsupported']} unsupported.")
    return "\n".join(lines) + "\n"

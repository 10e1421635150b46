#!/usr/bin/python
"""A module that crashes: it raises before printing any JSON (the parity suite's failing module)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: parity_crash
short_description: raise an exception, or exit with output that is not JSON
options:
  how:
    description: C(raise) raises ValueError; C(garbage) prints text that is not JSON and exits 3; C(ok) succeeds.
    type: str
    default: raise
"""

import sys

from ansible.module_utils.basic import AnsibleModule


def main() -> None:
    module = AnsibleModule(argument_spec={"how": {"type": "str", "default": "raise"}})
    if module.params["how"] == "garbage":
        sys.stdout.write("this is not json\n")
        sys.stdout.flush()
        sys.exit(3)
    if module.params["how"] == "ok":
        module.exit_json(changed=False, how="ok")
    raise ValueError("parity_crash was asked to crash")


if __name__ == "__main__":
    main()

"""Each playbook, run with stock Ansible and with ours on the same loopback hosts, gives the same outcome."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.parity.harness import Case, assert_same, public_dir, run_playbook

CASES = [
    Case("files_and_commands.yml"),
    Case("files_and_commands.yml", strategy="free"),
    Case("loops_and_vars.yml"),
    Case("handlers.yml"),
    Case("handlers.yml", strategy="free"),
    Case("blocks.yml", stock_rc=2),
    Case("blocks.yml", strategy="free", stock_rc=2),
    Case("includes_and_roles.yml"),
    Case("includes_and_roles.yml", args=["--tags", "x"]),
    Case("includes_and_roles.yml", strategy="free"),
    Case("delegation.yml"),
    Case("serial_and_limits.yml", stock_rc=2),
    Case("check_and_diff.yml"),
    Case("check_and_diff.yml", args=["--check", "--diff"]),
    Case("become.yml"),
    Case("async_and_retries.yml"),
    Case("facts.yml"),
    Case("failures.yml", stock_rc=2),
    # Without pipelining, as stock's first contact with a host then sends no input: with it, ssh's
    # error for a refused connection reads "Data could not be sent" instead of "Failed to
    # connect", and our first contact (starting the agent) sends none.
    Case("unreachable.yml", stock_rc=4, env={"ANSIBLE_PIPELINING": "False"}),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_same_outcome_as_stock_ansible(case: Case, parity_env: dict, tmp_path: Path) -> None:
    inventory, env = parity_env["inventory"], parity_env["env"]
    stock = run_playbook(case, inventory, public_dir(parity_env["roots"], f"{tmp_path.name}-stock"), tmp_path, accelerated=False, extra_env=env)
    ours = run_playbook(case, inventory, public_dir(parity_env["roots"], f"{tmp_path.name}-accel"), tmp_path, accelerated=True, extra_env=env)
    assert stock.per_host, f"the stock run produced no results:\n{stock.output[-3000:]}"
    assert_same(stock, ours, case)

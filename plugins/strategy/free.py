# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Strategy plugin: Ansible's free strategy, with every task run through Directord Accelerator agents."""

from __future__ import annotations

DOCUMENTATION = r"""
name: free
short_description: Ansible's free strategy, with tasks run by persistent Directord Accelerator agents
description:
  - Behaves as C(ansible.builtin.free) (same order, results, callbacks, handlers, errors and recap),
    but each task runs for each host in a thread of the controller instead of a forked worker, and
    its commands and modules travel to an agent that stays up on the host (the
    C(directord.accelerator.agent) connection) instead of over a new SSH session each.
  - The first task that reaches a host starts its agent through the host's configured connection
    (ssh with its inventory settings, local, paramiko); hosts whose connection the agent cannot
    replace (network devices, containers, ...) keep their own connection.
  - A server is started in the background on the controller when none is running; agents and
    server exit by themselves after an idle timeout, so the next run finds them warm.
  - Settings (server home and port, the address agents use to reach the controller, idle timeout,
    remote directory, Python on the host) are the options of the C(directord.accelerator.agent)
    connection plugin; see C(ansible-doc -t connection directord.accelerator.agent).
  - Tasks with a C(timeout) keyword run in a forked worker, as stock Ansible runs them, because
    Ansible enforces that timeout with a signal only a process's main thread receives.
author: Directord Accelerator developers
version_added: "0.1.0"
"""

from ansible.plugins.strategy.free import StrategyModule as StockFreeStrategy

from ansible_collections.directord.accelerator.plugins.plugin_utils.threaded import ThreadedWorkersMixin


class StrategyModule(ThreadedWorkersMixin, StockFreeStrategy):
    """The stock free strategy with threaded workers and agent connections."""

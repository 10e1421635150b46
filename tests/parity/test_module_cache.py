"""The module_utils cache kept across runs (plugins/plugin_utils/module_cache.py): used when
nothing changed, rebuilt when a module_utils file changed, so a run always ships current code."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.parity.harness import REPO, ansible_playbook

MODULE = '''#!/usr/bin/python
from ansible.module_utils.basic import AnsibleModule
from ansible_collections.acme.demo.plugins.module_utils.words import WORD


def main():
    module = AnsibleModule(argument_spec={})
    module.exit_json(changed=False, word=WORD)


if __name__ == "__main__":
    main()
'''

PLAYBOOK = """
- hosts: targets[0:1]
  gather_facts: false
  tasks:
    - acme.demo.greet:
      register: greeting
    - debug: {msg: "the word is {{ greeting.word }}"}
"""


def test_cached_module_utils_are_reused_until_a_source_changes(parity_env: dict, tmp_path: Path) -> None:
    collection = tmp_path / "collections" / "ansible_collections" / "acme" / "demo"
    (collection / "plugins" / "modules").mkdir(parents=True)
    (collection / "plugins" / "module_utils").mkdir(parents=True)
    (collection / "galaxy.yml").write_text("namespace: acme\nname: demo\nversion: 1.0.0\n")
    (collection / "plugins" / "modules" / "greet.py").write_text(MODULE)
    words = collection / "plugins" / "module_utils" / "words.py"
    words.write_text('WORD = "one"\n')
    (tmp_path / "site.yml").write_text(PLAYBOOK)
    cache = tmp_path / "cache" / "directord-accelerator" / "module-utils"
    env = {
        **os.environ, **parity_env["env"],
        "ANSIBLE_STRATEGY": "directord.accelerator.linear",
        "ANSIBLE_COLLECTIONS_PATH": f"{REPO / 'collections'}:{tmp_path / 'collections'}",
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_NOCOLOR": "1",
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }

    def run() -> str:
        done = subprocess.run([ansible_playbook(), "-i", str(parity_env["inventory"]), str(tmp_path / "site.yml")],
                              capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def entry_for_greet() -> Path:
        entries = [p for p in cache.glob("*.json") if str(words) in p.read_text()]
        assert len(entries) == 1, sorted(p.name for p in cache.glob("*.json"))
        return entries[0]

    assert '"msg": "the word is one"' in run()
    entry = entry_for_greet()
    members = {m["source"]: m for m in json.loads(entry.read_text())["members"]}
    assert str(words) in members  # the collection's module_utils file is recorded with where it came from
    first = entry.stat().st_ino

    assert '"msg": "the word is one"' in run()
    assert entry_for_greet().stat().st_ino == first  # used as it was, not rewritten

    words.write_text('WORD = "two"\n')
    assert '"msg": "the word is two"' in run()  # the edit is seen: the entry was not used...
    assert entry_for_greet().stat().st_ino != first  # ...and was rebuilt

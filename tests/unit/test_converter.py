"""convert-role's decisions on small roles written here: what becomes native, what falls back to
the module (and why), what is refused; the order edges it derives; and how it reports roles it
cannot read.  End-to-end equivalence with stock Ansible is tests/equivalence."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

from converters import dataflow
from converters.convert import convert


def make_role(root: Path, name: str, tasks: str, files: dict[str, str] | None = None) -> Path:
    role = root / name
    (role / "tasks").mkdir(parents=True)
    (role / "tasks" / "main.yml").write_text(textwrap.dedent(tasks))
    for relative, text in (files or {}).items():
        path = role / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return role


def rows(role: Path) -> dict[str, tuple[str, str]]:
    conversion = convert(role)
    assert not conversion.error, conversion.error
    return {row.name: (row.status, row.reason) for row in conversion.rows}


def test_each_task_is_native_fallback_or_unsupported_with_a_reason(tmp_path: Path) -> None:
    role = make_role(tmp_path, "web", """\
        - name: facts
          set_fact: {port: 80}
        - name: shell
          shell: echo {{ port }} | wc -c
        - name: command with creates
          command: touch /tmp/x creates=/tmp/x
        - name: file
          file: {path: /tmp/d, state: directory, mode: "0755"}
        - name: symbolic mode
          file: {path: /tmp/d, state: directory, mode: "u+rwx"}
        - name: template
          template: {src: a.j2, dest: /tmp/a}
        - name: lineinfile
          lineinfile: {path: /tmp/a, line: x}
        - name: async
          lineinfile: {path: /tmp/a, line: y}
          async: 10
          poll: 0
        - name: fetch
          fetch: {src: /tmp/a, dest: /tmp/b}
        - name: package
          package: {name: curl, state: present}
        """, {"templates/a.j2": "x\n"})
    found = rows(role)
    assert {name: status for name, (status, _) in found.items()} == {
        "facts": "native", "shell": "native", "command with creates": "native", "file": "native",
        "symbolic mode": "fallback", "template": "native", "lineinfile": "fallback", "async": "unsupported",
        "fetch": "unsupported", "package": "fallback",
    }
    assert "no native verb for lineinfile" in found["lineinfile"][1]
    assert "only commands run asynchronously" in found["async"][1] and "action plugin" in found["fetch"][1]
    assert "pkg_mgr" in found["package"][1]


def test_free_form_arguments_are_split_as_ansible_splits_them(tmp_path: Path) -> None:
    role = make_role(tmp_path, "cmd", """\
        - name: command
          command: cat "a b" chdir=/srv creates=/srv/done
        - name: shell
          shell: echo $HOME | tr a-z A-Z
        """)
    tasks = convert(role).document["tasks"]
    assert tasks[0]["jobs"] == [{"RUN": {"command": 'cat "a b"', "argv": True, "cwd": "/srv", "creates": "/srv/done"}}]
    assert tasks[1]["jobs"] == [{"RUN": {"command": "echo $HOME | tr a-z A-Z"}}]


def test_keywords_carry_over_and_with_loops_keep_their_lookup(tmp_path: Path) -> None:
    role = make_role(tmp_path, "kw", """\
        - name: loop
          debug: {msg: "{{ item }}"}
          with_items: [[1, 2], 3]
          when: enabled | bool
          register: out
          changed_when: false
          ignore_errors: true
          tags: a, b
          notify: restart
        """)
    [task] = convert(role).document["tasks"]
    assert task["loop"] == [[1, 2], 3] and task["loop_with"] == "items"
    assert task["when"] == ["enabled | bool"] and task["register"] == "out"
    assert task["tags"] == ["a", "b"] and task["notify"] == ["restart"] and task["changed_when"] is False


def test_imports_become_blocks_and_includes_stay_dynamic(tmp_path: Path) -> None:
    role = make_role(tmp_path, "inc", """\
        - import_tasks: part.yml
          when: x is defined
        - name: included
          include_tasks: part.yml
          loop: [1, 2]
        - name: by name
          include_tasks: "{{ mode }}.yml"
        """, {"tasks/part.yml": "- name: inner\n  debug: {msg: hi}\n", "tasks/fast.yml": "- name: fast\n  debug: {msg: f}\n"})
    document = convert(role).document
    imported, included, templated = document["tasks"]
    assert imported["block"][0]["name"] == "inner" and imported["when"] == ["x is defined"]
    assert "dynamic" not in imported
    assert included["dynamic"] is True and included["loop"] == [1, 2] and included["block"][0]["name"] == "inner"
    assert templated["include"] == "{{ mode }}.yml" and set(document["task_files"]) == {"part.yml", "fast.yml"}


def test_independent_file_tasks_run_side_by_side_and_data_flow_orders_the_rest(tmp_path: Path) -> None:
    role = make_role(tmp_path, "flow", """\
        - name: a dir
          file: {path: /srv/a, state: directory}
        - name: b dir
          file: {path: /srv/b, state: directory}
        - name: a file
          copy: {content: x, dest: /srv/a/x}
        - name: remember
          set_fact: {greeting: hi}
        - name: use
          copy: {content: "{{ greeting }}", dest: /srv/b/y}
        - name: anything
          command: ls /srv
        - name: last
          debug: {msg: done}
        """)
    order = {t["name"]: t.get("requires", []) for t in convert(role).document["tasks"]}
    assert order["a dir"] == [] and order["b dir"] == [] and order["remember"] == []
    assert order["a file"] == ["a-dir"]  # inside the directory it needs
    assert order["use"] == ["b-dir", "remember"]
    assert order["anything"] == ["a-file", "use"]  # a command may touch anything: it waits for all
    assert order["last"] == ["anything"]


def test_guards_keep_their_place() -> None:
    guard = dataflow.effects({"id": "g", "jobs": [{"ASSERT": {"that": ["x == 1"]}}]})
    later = dataflow.effects({"id": "w", "jobs": [{"FILE": {"path": "/srv/unrelated", "state": "directory"}}]})
    assert not dataflow.independent(guard, later)


def test_a_broken_role_names_file_and_line_and_all_goes_on(tmp_path: Path) -> None:
    roles = tmp_path / "roles"
    make_role(roles, "good", "- name: ok\n  debug: {msg: hi}\n")
    make_role(roles, "bad_yaml", "- name: x\n  debug: {msg: hi\n")
    make_role(roles, "two_modules", "- name: x\n  debug: {msg: hi}\n  command: ls\n")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "converters.cli", "--all", str(roles), "-o", str(out), "--report", "json"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    report = {r["role"]: r for r in json.loads(done.stdout)["roles"]}
    assert report["good"]["totals"]["native"] == 1
    assert "bad_yaml/tasks/main.yml:2" in report["bad_yaml"]["error"] or "main.yml:3" in report["bad_yaml"]["error"]
    assert report["two_modules"]["error"].endswith("main.yml:1: task has more than one module (debug, command)")
    assert (out / "good" / "service.yaml").is_file() and not (out / "bad_yaml").exists()
    assert "bad_yaml" in done.stderr


def test_the_written_service_loads_and_validates(tmp_path: Path) -> None:
    from accelerator.graph import service

    role = make_role(tmp_path / "roles", "app", """\
        - name: conf
          template: {src: app.j2, dest: /srv/app.conf, mode: "0644"}
          notify: restart app
        """, {"templates/app.j2": "port={{ port }}\n", "handlers/main.yml": "- name: restart app\n  command: /bin/true\n",
              "defaults/main.yml": "port: 80\n"})
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "converters.cli", str(role), "-o", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "2 tasks: 2 native" in done.stdout  # the handler is a task too
    loaded = service.load(out / "service.yaml")
    assert loaded.defaults == {"port": 80} and loaded.handlers[0].name == "restart app"
    assert (out / "templates" / "app.j2").read_text() == "port={{ port }}\n"
    assert yaml.safe_load((out / "service.yaml").read_text())["tasks"][0]["notify"] == ["restart app"]


def test_old_list_form_task_vars_are_merged_as_ansible_merges_them(tmp_path: Path) -> None:
    role = make_role(tmp_path, "oldvars", """\
        - name: uses list vars
          debug: {msg: "{{ a }}{{ b }}"}
          vars:
            - a: 1
            - b: 2
        """)
    [task] = convert(role).document["tasks"]
    assert task["vars"] == {"a": 1, "b": 2}

"""One role, four ways: stock Ansible, mitogen, ours as a playbook, and ours converted to a service.

Why: the issue's goal for converted roles is "a converted role runs at least 10x faster than the
original under stock Ansible on 10 hosts".  So one role (bench/roles/bench_service: 21 tasks and a
handler in the manner of tripleo-ansible's service roles, see its tasks/main.yml) is applied to
the same real sshd hosts four ways, one after the other in one invocation, measured exactly as
bench/playbook_run.py measures playbooks (its functions are reused here; read its docstring):

- stock: `ansible-playbook` with `linear`, pipelining and ControlPersist, a play applying the role.
- mitogen: the same playbook with `mitogen_linear`.
- ours-playbook: the same playbook with `directord.accelerator.linear`, agents warm (for context).
- ours-converted: the role converted once, untimed, with `python -m converters.cli ROLE -o OUT`
  (convert-role; its coverage line is printed), then run with
  `python -m accelerator.cli --home SERVER_HOME orchestrate --restart -i INVENTORY.yaml`: the whole
  process is timed, ansible-core's import for templating included.  It runs against the server
  and agents the ours-playbook warm-up run started (server home = DIRECTORD_ACCELERATOR_HOME,
  agents bootstrapped over ssh).  Those agents are named after the connection, not the inventory
  host (`ssh_dacc_ADDRESS_PORT`), so the orchestration inventory maps each host to its agent,
  checked against `manage --list-nodes` first.  Each host's `vars` hold `root`, the one variable
  the playbook runs get with -e.  `--restart`: a failed run's checkpoints must not make the next
  run resume.  The server's CPU counts as controller CPU, the agents' as host CPU, as for ours-playbook.

No facts are gathered on either side (the role reads none).  Every run gets a fresh root; after
every run each host's file tree (paths, modes, contents) and the per-host counters (ok, changed,
failed, skipped, rescued, ignored; Ansible's PLAY RECAP or orchestrate's RECAP) must equal the
first run's, or the contender counts as failed.  Idempotence: after its timed runs, each contender
runs once more, untimed, on its warm-up run's root; that second run must leave the same files as a
first run and report the same counters as the first contender's second run (the role changes
nothing the second time).

Usage: python bench/converted_role.py [--hosts 10] [--runs 3] [--forks N]
                                      [--contenders stock,mitogen,ours-playbook,ours-converted]
                                      [--profile FILE] [--keep] [--json PATH]
--profile FILE: one more ours-converted run (untimed) under py-spy (`py-spy record --idle -f raw`: idle
stacks included, so waiting shows).
Prints markdown tables and writes bench/results/converted_role-STAMP.json (or --json PATH).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.engine import free_port
from bench.measure import install_interrupt_handlers, machine_info, measured_session, write_results
from bench.playbook_run import (
    FIRST_ADDRESS,
    Bench,
    ContenderUnavailable,
    Measurement,
    RunFailed,
    contender_env,
    measure_contender,
    parse_recap,
    report_text,
    reproduce_command,
    root_of,
    run_once,
    start_hosts,
    stop_leftovers,
    summarize,
    ratios,
    versions,
    write_inventory,
)
from tests.sshd import LOGIN_USER, SshHosts

CONTENDERS = ("stock", "mitogen", "ours-playbook", "ours-converted")
RATIO_PAIRS = (("stock", "ours-converted"), ("mitogen", "ours-converted"), ("ours-playbook", "ours-converted"))
ROLE = REPO / "bench" / "roles" / "bench_service"
# The counters both recaps have; unreachable (Ansible) and resumed (ours) are kept only when not 0,
# so they make a run differ from the first.
COUNTERS = ("ok", "changed", "failed", "skipped", "rescued", "ignored")
OUR_RECAP_LINE = re.compile(r"^(\S+)\s+((?:\w+=\d+\s*)+)$", re.MULTILINE)
CONVERT_TIMEOUT = 300


# -- recaps --------------------------------------------------------------------------------


def normalized(recap: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    return {host: {**{key: counts.get(key, 0) for key in COUNTERS},
                   **{key: value for key, value in counts.items() if key not in COUNTERS and value}}
            for host, counts in recap.items()}


def ansible_recap(output: str) -> dict[str, dict[str, int]]:
    return normalized(parse_recap(output))


def orchestrate_recap(output: str) -> dict[str, dict[str, int]]:
    """`directord orchestrate`'s RECAP: `host1   ok=21 changed=9 failed=0 skipped=1 ...`."""
    text = output.rsplit("\nRECAP\n", 1)[-1] if "\nRECAP\n" in output else ""
    return normalized({match[1]: {key: int(value) for key, value in (pair.split("=") for pair in match[2].split())}
                       for match in OUR_RECAP_LINE.finditer(text)})


# -- the role: playbook, conversion, orchestration inventory --------------------------------


def write_playbook(path: Path) -> None:
    play = {"name": "converted_role benchmark", "hosts": "targets", "gather_facts": False,
            "roles": [{"role": str(ROLE)}]}
    path.write_text(yaml.safe_dump([play], sort_keys=False, width=1000))


def convert_role(out: Path) -> tuple[Path, str]:
    """convert-role, once; returns the service file and the coverage line of its report."""
    done = subprocess.run([sys.executable, "-m", "converters.cli", str(ROLE), "-o", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=CONVERT_TIMEOUT)
    if done.returncode != 0:
        raise RunFailed(f"convert-role exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    coverage = next((line for line in done.stdout.splitlines() if re.match(r"^\d+ tasks: ", line)), "")
    others = []  # the report's table rows: | task | source | module | status | reason |
    for line in done.stdout.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[3] in ("fallback", "unsupported"):
            others.append(f"{cells[3]}: {cells[0]} ({cells[1]}, {cells[4]})")
    return out / "service.yaml", "; ".join([coverage, *others])


def agents_by_host(bench: Bench, sshds: list[SshHosts]) -> dict[str, str]:
    """Each inventory host's agent, as our strategy names it (connection kind, login user, address,
    port), checked against the server's list of active agents."""
    done = subprocess.run([sys.executable, "-m", "accelerator.cli", "--home", str(bench.home), "manage",
                           "--list-nodes", "--json"], cwd=REPO, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RunFailed(f"manage --list-nodes exited {done.returncode}: {done.stderr[-2000:]}")
    nodes = json.loads(done.stdout)
    addresses = [(address, hosts.port) for hosts in sshds for address in hosts.addresses]
    agents = {host: f"ssh_{LOGIN_USER}_{address}_{port}" for host, (address, port) in zip(bench.hostnames, addresses)}
    missing = {host: agent for host, agent in agents.items() if nodes.get(agent, {}).get("state") != "active"}
    if missing:
        raise RunFailed(f"agents not active on the server: {missing}; the server lists {sorted(nodes)}")
    return agents


def orchestrate_command(bench: Bench, service_file: Path, agents: dict[str, str]) -> Callable[[Path], list[str]]:
    """command(root) for run_once: writes the run's orchestration inventory (untimed), returns the argv."""
    def command(root: Path) -> list[str]:
        inventory = bench.work / "orchestrate" / f"{root.name}.yaml"
        inventory.parent.mkdir(exist_ok=True)
        hosts = {host: {"agent": agent, "services": [ROLE.name], "vars": {"root": str(root)}}
                 for host, agent in agents.items()}
        inventory.write_text(yaml.safe_dump({"services": [str(service_file)], "hosts": hosts}, sort_keys=False))
        return [sys.executable, "-m", "accelerator.cli", "--home", str(bench.home), "orchestrate", "--restart",
                "-i", str(inventory)]

    return command


def orchestrate_env(bench: Bench) -> dict[str, str]:
    """The same Ansible configuration the playbook runs see (it matters only for templating here)."""
    env = contender_env(bench, "ours-playbook")
    return {key: value for key, value in env.items() if not key.startswith("ANSIBLE_STRATEGY")}


# -- the runs -------------------------------------------------------------------------------


@dataclasses.dataclass
class Plan:
    """How each contender is run: env, command and recap parser for run_once."""

    bench: Bench
    sshds: list[SshHosts]
    service_file: Path
    second: dict[str, Any] = dataclasses.field(default_factory=dict)  # the first second run's outcome
    agents: dict[str, str] = dataclasses.field(default_factory=dict)

    def how(self, contender: str) -> dict[str, Any]:
        if contender != "ours-converted":
            return {"env": contender_env(self.bench, contender), "parse": ansible_recap}
        if not self.agents:
            self.agents = agents_by_host(self.bench, self.sshds)
        return {"env": orchestrate_env(self.bench), "parse": orchestrate_recap,
                "command": orchestrate_command(self.bench, self.service_file, self.agents)}

    def second_run(self, contender: str) -> Measurement:
        """Once more on the warm-up run's root (untimed): the role must change nothing."""
        bench = dataclasses.replace(self.bench, expected=self.second)
        how = self.how(contender)
        print(f"{contender}: second run on the warm-up root ...", file=sys.stderr, flush=True)
        result = run_once(bench, contender, "second", how.pop("env"), root=root_of(self.bench, contender, "warmup"),
                          **how)
        if not self.second:
            if bench.expected["files"] != self.bench.expected["files"]:
                raise RunFailed(f"{contender} second run: the files differ from a first run's: the role is not "
                                "idempotent")
            self.second = bench.expected
        return result


def measure_all(args: argparse.Namespace, launcher: Any, monitor: Any,
                work: Path) -> tuple[dict[str, list[Measurement]], dict[str, str], list[str], dict[str, Any]]:
    """Hosts up, role converted, every selected contender in turn; (measurements, skipped, errors, notes)."""
    work.chmod(0o755)  # the login user must reach the roots and the remote dir below it
    (work / "remote").mkdir(mode=0o777)
    (work / "remote").chmod(0o777)
    (work / "ansible.cfg").write_text("[defaults]\n")
    sshds = start_hosts(work, args.hosts, monitor)
    skipped = {name: "not selected (--contenders)" for name in CONTENDERS if name not in args.contenders}
    measured: dict[str, list[Measurement]] = {}
    errors: list[str] = []
    notes: dict[str, Any] = {"second_run_passed": []}
    try:
        bench = Bench(launcher=launcher, monitor=monitor, work=work, inventory=work / "inventory",
                      playbook=work / "playbook.yml", hostnames=write_inventory(work / "inventory", sshds),
                      forks=args.forks, port=free_port())
        write_playbook(bench.playbook)
        service_file, notes["coverage"] = convert_role(work / "converted" / ROLE.name)
        print(f"convert-role: {notes['coverage']}", file=sys.stderr, flush=True)
        plan = Plan(bench, sshds, service_file)
        ordered = [name for name in CONTENDERS if name in args.contenders]
        for contender in ordered:
            try:
                if contender == "ours-converted" and "ours-playbook" not in args.contenders:
                    print("ours-converted: one ours-playbook run to start the server and agents ...",
                          file=sys.stderr, flush=True)
                    run_once(bench, "ours-playbook", "warmup", **plan.how("ours-playbook"))
                how = plan.how(contender)
                measured[contender] = measure_contender(bench, contender, args.runs, args.idle_wait, **how)
                second = plan.second_run(contender)
                notes["second_run_passed"].append(contender)
                notes["second_run_recap"] = plan.second["recap"]
                print(f"  second run: {second.wall:.2f} s", file=sys.stderr, flush=True)
                if contender == "ours-converted" and args.profile:
                    profile(plan, args.profile)
            except ContenderUnavailable as exc:
                skipped[contender] = str(exc)
                print(f"  SKIPPED: {exc}", file=sys.stderr, flush=True)
            except (RunFailed, TimeoutError) as exc:
                why = failure_lines(launcher.log_dir, contender)
                errors.append(f"{contender}: {exc}" + (f"\n  first failures in its logs:\n{why}" if why else ""))
                print(f"  FAILED: {exc}\n{why}", file=sys.stderr, flush=True)
            finally:
                if contender in ("stock", "mitogen"):
                    stop_leftovers(bench, contender)
        for contender in ("ours-playbook", "ours-converted"):  # the converted runs use ours-playbook's agents
            stop_leftovers(bench, contender)
        notes["agents"] = plan.agents
        return measured, skipped, errors, notes
    finally:
        for hosts in sshds:
            hosts.stop()


def failure_lines(log_dir: Path, contender: str, limit: int = 5) -> str:
    """The first lines of the contender's run logs that say why a host failed (the error shows only a tail)."""
    found = []
    for log in sorted(log_dir.glob(f"{contender}-*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if "UNREACHABLE!" in line or line.startswith(("fatal:", "failed ")) or "Traceback" in line:
                found.append(f"    {log.name}: {line[:600]}")
    return "\n".join(found[:limit])


def profile(plan: Plan, path: Path) -> None:
    """One more ours-converted run on a fresh root under py-spy (raw folded stacks in `path`)."""
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if py_spy is None:
        print("  --profile: py-spy is not installed; no profile", file=sys.stderr)
        return
    how = plan.how("ours-converted")
    command = how["command"]
    print(f"ours-converted: profiled run (py-spy -> {path}) ...", file=sys.stderr, flush=True)
    how["command"] = lambda root: [py_spy, "record", "--idle", "--rate", "250", "-f", "raw", "-o", str(path.resolve()),
                                   "--", *command(root)]
    run_once(plan.bench, "ours-converted", "profile", how.pop("env"), **how)


# -- report ---------------------------------------------------------------------------------


def revision() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], check=False, capture_output=True, text=True).stdout

    head = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    return head + (" with uncommitted changes" if git("status", "--porcelain").strip() else "")


def code_fingerprint() -> str:
    """A digest of the code the runs exercise (accelerator/, converters/, plugins/, this role), committed or
    not: other work may edit the tree while the benchmark runs, and figures must not mix versions."""
    digest = hashlib.sha256()
    for top in ("accelerator", "converters", "plugins", "bench/roles"):
        for path in sorted((REPO / top).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=10, help="loopback hosts 127.0.0.2 upwards")
    parser.add_argument("--forks", type=int, default=None, help="ANSIBLE_FORKS (default: max(5, hosts))")
    parser.add_argument("--runs", type=int, default=3,
                        help="timed runs of each contender after its warm-up run (medians reported)")
    parser.add_argument("--contenders", type=lambda text: text.split(","), default=list(CONTENDERS),
                        help="comma-separated subset of " + ",".join(CONTENDERS))
    parser.add_argument("--profile", type=Path, default=None,
                        help="after ours-converted's timed runs, one more (untimed) under py-spy, raw output here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, roots, service)")
    parser.add_argument("--json", type=Path, default=None,
                        help="write the JSON results here (default: bench/results/converted_role-STAMP.json)")
    parser.add_argument("--idle-wait", type=float, default=30.0,
                        help="before each timed run, wait up to this many seconds for the machine to be idle "
                             "(keep it under ControlPersist's 60 s)")
    args = parser.parse_args()
    unknown = set(args.contenders) - set(CONTENDERS)
    if unknown:
        parser.error(f"unknown contenders: {', '.join(sorted(unknown))}")
    if not 1 <= args.hosts <= 255 - FIRST_ADDRESS or args.runs < 1:
        parser.error(f"--hosts must be 1..{255 - FIRST_ADDRESS}, --runs at least 1")
    args.forks = args.forks or max(5, args.hosts)
    return args


def main() -> int:
    args = parse_args()
    install_interrupt_handlers()
    info = {**machine_info(), "revision": revision(), "code_fingerprint": code_fingerprint(), **versions()}
    with measured_session("converted-role", args.keep) as (launcher, monitor, work):
        measured, skipped, errors, notes = measure_all(args, launcher, monitor, work)
    if code_fingerprint() != info["code_fingerprint"]:
        errors.append(f"the code under accelerator/, converters/ or plugins/ changed during the runs "
                      f"(fingerprint {info['code_fingerprint']} -> {code_fingerprint()}): figures mix versions")
    summary = {name: summarize(runs[1:]) for name, runs in measured.items()}
    found = ratios(summary, RATIO_PAIRS)
    command = reproduce_command("bench/converted_role.py")
    print(f"\nrole {ROLE.relative_to(REPO)} x {args.hosts} hosts (sshd on loopback), forks {args.forks}, no facts; "
          f"ansible-core {info['ansible-core']}, mitogen {info['mitogen']}; {info['nproc']} x {info['cpu_model']}, "
          f"{info['ram_gib']} GiB, Linux {info['kernel']}, Python {info['python']}; {info['date']}; "
          f"revision {info['revision']} (code fingerprint {info['code_fingerprint']}); medians of {args.runs} timed run(s) after one warm-up run each\n")
    print(f"convert-role: {notes.get('coverage', '-')}\n")
    print(report_text(summary, found, skipped, errors))
    if notes.get("second_run_recap"):
        changed = sorted({counts["changed"] for counts in notes["second_run_recap"].values()})
        print(f"- second run on the warm-up root (untimed) of {', '.join(notes['second_run_passed'])}: "
              f"changed={'/'.join(map(str, changed))} on every host, the same counters for each, files unchanged")
    print("- ours-converted: controller = the `directord orchestrate` process plus the server; every run "
          "includes starting Python and importing ansible-core for templating")
    print(f"\nreproduce: {command}")
    data = {"machine": info, "options": {k: str(v) for k, v in vars(args).items()}, "command": command,
            "notes": notes, "summary": summary, "ratios": found, "skipped": skipped, "errors": errors,
            "runs": {name: [{**dataclasses.asdict(m), "cpu_total": m.cpu_total} for m in runs]
                     for name, runs in measured.items()}}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2, default=str) + "\n")
        path = args.json
    else:
        path = write_results(REPO / "bench" / "results", "converted_role", data)
    path = path.resolve()
    print(f"results: {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return 1 if errors else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; every process started was stopped", file=sys.stderr)
        sys.exit(130)

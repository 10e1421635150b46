"""`directord`: server, agent, exec, orchestrate, manage, keys.

Each subcommand is one function taking the parsed arguments and returning an exit code.
Errors the user can fix are printed as one line naming what and where, with exit code 2;
failed jobs give exit code 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable

from accelerator import __version__, components, keys, paths
from accelerator.client import Client, Outcome, ServerError, ServerUnreachable
from accelerator.components.base import ComponentError
from accelerator.model import JobSpec
from accelerator.protocol import Kind

log = logging.getLogger("directord")


class UsageError(Exception):
    """A problem the user can fix; printed without a traceback."""


# -- server and agent ---------------------------------------------------------------------


def cmd_server(args: argparse.Namespace) -> int:
    from accelerator.server import Server, ServerConfig

    config = ServerConfig(
        home=args.home,
        agent_endpoint=args.bind,
        store_url=args.store,
        insecure=args.insecure,
        heartbeat_interval=args.heartbeat,
        expiry=args.expiry,
        idle_timeout=args.idle_timeout,
    )
    if args.insecure:
        print("WARNING: --insecure: agents are not authenticated and traffic is plaintext", file=sys.stderr)
    Server(config).serve()
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    from accelerator.agent import Agent, AgentConfig

    home: Path = args.agent_home
    server_public = keypair = None
    if args.insecure:
        print("WARNING: --insecure: this agent will run jobs from any server that reaches it", file=sys.stderr)
    else:
        pair = keys.write_keypair(home / "keys", "agent")
        keypair = (pair.public, pair.secret)
        server_key_file = args.server_key or home / "keys" / "server.pub"
        server_public = keys.read_public(Path(server_key_file))
    config = AgentConfig(
        server=args.server,
        name=keys.check_name(args.name),
        home=home,
        server_public=server_public,
        keypair=keypair,
        insecure=args.insecure,
        allowed_roots=tuple(Path(p).resolve() for p in args.allowed_root) or (Path("/"),),
        heartbeat_interval=args.heartbeat,
        idle_timeout=args.idle_timeout,
        warm_zygote=args.warm_zygote,
    )
    Agent(config).run()
    return 0


# -- jobs -----------------------------------------------------------------------------------


def cmd_exec(args: argparse.Namespace) -> int:
    try:
        component = components.get(args.verb)
        parsed = component.parse(" ".join(args.exec), base_dir=Path.cwd())
    except ComponentError as exc:
        raise UsageError(str(exc)) from None
    spec = JobSpec(
        verb=component.verb,
        args=parsed.args,
        targets=args.target or [],
        timeout=parsed.timeout,
        blobs=sorted(parsed.uploads),
        label=f"{component.verb} {' '.join(args.exec)}"[:200],
        async_parent=args.async_parent,
    )
    return _run_jobs(args, [spec], parsed.uploads)


def cmd_orchestrate(args: argparse.Namespace) -> int:
    from accelerator import orchestration  # PyYAML: not needed by the server or agents

    if args.inventory or any(orchestration.is_service_file(Path(p)) for p in args.files):
        from accelerator.graph import command

        try:
            return command.orchestrate(args)
        except command.GraphUsageError as exc:
            raise UsageError(str(exc)) from None
    specs: list[JobSpec] = []
    uploads: dict[str, Path] = {}
    for path in args.files:
        try:
            plan = orchestration.load(Path(path), targets_override=args.target)
        except orchestration.OrchestrationError as exc:
            raise UsageError(str(exc)) from None
        specs.extend(plan.jobs)
        uploads.update(plan.uploads)
    return _run_jobs(args, specs, uploads)


def _run_jobs(args: argparse.Namespace, specs: list[JobSpec], uploads: dict[str, Path]) -> int:
    with _client(args) as client:
        client.upload(uploads)
        accepted = client.submit(specs, watch=not args.no_wait)
        if args.no_wait:
            for job in accepted:
                print(job["id"])
            return 0
        expected = {job["id"]: set(job["targets"]) for job in accepted}
        labels = {spec.id: spec.label for spec in specs}
        outcomes: list[Outcome] = []
        for outcome in client.results(expected, timeout=args.wait_timeout):
            outcomes.append(outcome)
            if not args.json:
                _print_outcome(outcome, labels.get(outcome.job, ""), args.verbose)
    if args.json:
        print(json.dumps([{"job": o.job, "agent": o.agent, **o.result.to_wire()} for o in outcomes], indent=2))
    else:
        _print_totals(outcomes)
    return 0 if all(o.result.ok for o in outcomes) else 1


def _print_outcome(outcome: Outcome, label: str, verbose: bool) -> None:
    result = outcome.result
    took = f"{result.ended - result.started:.3f}s" if result.started and result.ended else "-"
    flag = " changed" if result.changed else ""
    print(f"{outcome.agent:<20} {result.state.value:<8}{flag:<8} rc={result.rc} {took:>8}  {label}")
    if verbose or not result.ok:
        extra = result.error if result.error and result.error not in result.stderr else ""
        for name, text in (("stdout", result.stdout), ("stderr", result.stderr), ("reason", extra)):
            if text.strip():
                print(f"  {name}: " + text.rstrip().replace("\n", "\n          "))


def _print_totals(outcomes: list[Outcome]) -> None:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.result.state.value] = counts.get(outcome.result.state.value, 0) + 1
    print("totals: " + ", ".join(f"{state}={n}" for state, n in sorted(counts.items())))


# -- manage ---------------------------------------------------------------------------------


def cmd_manage(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.list_nodes:
            return _show(args, client.request(Kind.NODES)["nodes"], _format_nodes)
        if args.list_jobs:
            return _show(args, client.request(Kind.JOBS)["jobs"], _format_jobs)
        if args.job_info:
            return _show(args, client.request(Kind.JOB_INFO, job=args.job_info)["job"], _format_job)
        reply = client.request(Kind.PURGE, jobs=args.purge_jobs, nodes=args.purge_nodes)
        print(f"purged {reply['jobs']} jobs and {reply['nodes']} nodes")
        return 0


def _show(args: argparse.Namespace, data: Any, formatter: Callable[[Any], None]) -> int:
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    else:
        formatter(data)
    return 0


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else "-"


def _format_nodes(nodes: dict[str, dict[str, Any]]) -> None:
    print(f"{'NAME':<24} {'STATE':<8} {'LAST HEARTBEAT':<20} {'EXPIRES':<20} {'INFLIGHT':>8} HOST")
    for name, info in sorted(nodes.items()):
        print(f"{name:<24} {info.get('state', '-'):<8} {_when(info.get('last_heartbeat')):<20} "
              f"{_when(info.get('expires')):<20} {info.get('inflight', 0):>8} {info.get('hostname', '-')}")


def _format_jobs(jobs: list[dict[str, Any]]) -> None:
    print(f"{'ID':<32} {'SUBMITTED':<20} {'VERB':<8} STATES")
    for job in jobs:
        states = " ".join(f"{k}={v}" for k, v in sorted(job["states"].items()))
        print(f"{job['id']:<32} {_when(job['submitted']):<20} {job['verb']:<8} {states}  {job['label']}")


def _format_job(job: dict[str, Any]) -> None:
    spec = job["spec"]
    print(f"job {spec['id']}  parent {spec['parent']}  verb {spec['verb']}  submitted {_when(job['submitted'])}")
    print(f"  {spec['label']}")
    for agent, result in sorted(job["results"].items()):
        took = (f"{result['ended'] - result['started']:.3f}s"
                if result.get("started") and result.get("ended") else "-")
        print(f"  {agent:<20} {result['state']:<8} rc={result.get('rc')} changed={result.get('changed')} "
              f"started={_when(result.get('started'))} took={took}")
        for name in ("stdout", "stderr"):
            if (result.get(name) or "").strip():
                print(f"    {name}: " + result[name].rstrip().replace("\n", "\n            "))


# -- keys -----------------------------------------------------------------------------------


def cmd_keys(args: argparse.Namespace) -> int:
    enrollment = keys.Enrollment(args.home / "keys")
    if args.keys_command == "generate":
        directory = Path(args.dir) if args.dir else args.home / "keys"
        pair = keys.write_keypair(directory, args.name, overwrite=args.force)
        print(f"{directory / (args.name + '.pub')}: {pair.public}")
        return 0
    if args.keys_command == "enroll":
        key = keys.read_public(Path(args.key_file)) if args.key_file else args.key
        if not key:
            raise UsageError("keys enroll: give --key-file FILE or --key Z85")
        path = enrollment.enroll(args.name, key)
        print(f"enrolled {args.name} ({path})")
    elif args.keys_command == "revoke":
        if not enrollment.revoke(args.name):
            raise UsageError(f"keys revoke: {args.name} is not enrolled")
        print(f"revoked {args.name}")
    else:
        for name, key in sorted(enrollment.load().items()):
            print(f"{name:<24} {key}")
        return 0
    _tell_server_to_reload(args)
    return 0


def _tell_server_to_reload(args: argparse.Namespace) -> None:
    """A running server picks up enrollments at once; a stopped one reads them when it starts."""
    try:
        with Client(args.home, timeout=2.0) as client:
            reply = client.request(Kind.RELOAD_KEYS)
        if reply.get("dropped"):
            print(f"disconnected: {', '.join(reply['dropped'])}")
    except (ServerUnreachable, ServerError):
        pass


# -- parser ---------------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> Client:
    return Client(args.home, timeout=args.request_timeout)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="directord", description="Directord Accelerator job engine.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--home", type=Path, default=paths.default_home(),
                        help="server state: keys, blobs, control socket (default $DIRECTORD_HOME or ~/.directord)")
    parser.add_argument("--debug", action="store_true", help="verbose logging")
    parser.add_argument("--request-timeout", type=float, default=10.0, help="seconds to wait for the server")
    sub = parser.add_subparsers(dest="command", required=True)

    server = sub.add_parser("server", help="run the server")
    server.add_argument("--bind", default="tcp://127.0.0.1:5555", help="agent endpoint (ZeroMQ address)")
    server.add_argument("--store", default="memory", help="memory | sqlite:///PATH | redis://HOST:PORT/DB")
    server.add_argument("--insecure", action="store_true", help="no Curve: plaintext and unauthenticated")
    server.add_argument("--heartbeat", type=float, default=1.0, help="heartbeat interval in seconds")
    server.add_argument("--expiry", type=float, default=10.0, help="seconds of silence before an agent expires")
    server.add_argument("--idle-timeout", type=float,
                        help="exit after this many seconds without client requests or outstanding jobs")
    server.set_defaults(func=cmd_server)

    agent = sub.add_parser("agent", help="run an agent")
    agent.add_argument("--server", default="tcp://127.0.0.1:5555", help="server endpoint")
    agent.add_argument("--name", default=socket.gethostname(), help="this agent's enrolled name")
    agent.add_argument("--agent-home", type=Path, default=paths.default_agent_home(),
                       help="agent state: keys, journal, blob cache")
    agent.add_argument("--server-key", help="the server's public key file to pin (default AGENT_HOME/keys/server.pub)")
    agent.add_argument("--insecure", action="store_true", help="no Curve: plaintext and unauthenticated")
    agent.add_argument("--allowed-root", action="append", default=[],
                       help="directory file-writing verbs may write below (repeatable; default /)")
    agent.add_argument("--heartbeat", type=float, default=1.0)
    agent.add_argument("--idle-timeout", type=float, help="exit after this many seconds without jobs")
    agent.add_argument("--warm-zygote", action="store_true",
                       help="start the Ansible module zygote at once instead of on the first module")
    agent.set_defaults(func=cmd_agent)

    for name, func, help_text in (("exec", cmd_exec, "run one verb"),
                                  ("orchestrate", cmd_orchestrate, "run orchestration files")):
        job = sub.add_parser(name, help=help_text)
        if name == "exec":
            job.add_argument("--verb", required=True, help=f"one of {', '.join(sorted(components.REGISTRY))}")
            job.add_argument("--async", dest="async_parent", action="store_true",
                             help="run beside other jobs instead of in each agent's queue")
            job.add_argument("exec", nargs="+", metavar="ARGS",
                             help="the verb's arguments, quoted as one string: 'echo hello'")
        else:
            job.add_argument("files", nargs="*", help="orchestration files, or service files (see --inventory)")
            job.add_argument("-i", "--inventory", type=Path,
                             help="services: which hosts run which services (loads the services it lists)")
            job.add_argument("--dry-run", action="store_true", help="services: print the plan and the graph, run nothing")
            job.add_argument("--graph", choices=("text", "dot", "svg"), default="text",
                             help="services: how --dry-run draws the graph")
            job.add_argument("--restart", action="store_true",
                             help="services: forget the checkpoints of an earlier failed run and start over")
            job.add_argument("--checkpoints", metavar="STORE",
                             help="services: where finished tasks are checkpointed (default sqlite:///HOME/checkpoints.db)")
            job.add_argument("-e", "--extra-vars", action="append", default=[], metavar="K=V|@FILE|JSON",
                             help="services: variables above all others, as ansible-playbook -e")
            job.add_argument("--name", default="", help="services: the run's checkpoint name (default: from services and hosts)")
            job.add_argument("--tags", action="append", default=[], help="services: only tasks with these tags (comma-separated)")
            job.add_argument("--skip-tags", action="append", default=[], help="services: skip tasks with these tags")
            job.add_argument("-C", "--check", action="store_true", help="services: check mode, as ansible-playbook --check")
            job.add_argument("--rollback-on-failure", action="store_true",
                             help="services: when a host fails, run the rollback jobs of the failed service's "
                                  "finished tasks on it, last first")
        job.add_argument("--target", action="append", help="agent name (repeatable; default all active)")
        job.add_argument("--no-wait", action="store_true", help="print job ids and return")
        job.add_argument("--wait-timeout", type=float, help="give up waiting after this many seconds")
        job.add_argument("--json", action="store_true", help="results as JSON")
        job.add_argument("-v", "--verbose", action="store_true", help="show output of successful jobs too")
        job.set_defaults(func=func)

    manage = sub.add_parser("manage", help="inspect nodes and jobs")
    group = manage.add_mutually_exclusive_group(required=True)
    group.add_argument("--list-nodes", action="store_true")
    group.add_argument("--list-jobs", action="store_true")
    group.add_argument("--job-info", metavar="JOB_ID")
    group.add_argument("--purge-jobs", action="store_true", help="delete finished jobs")
    group.add_argument("--purge-nodes", action="store_true", help="forget agents that are not connected")
    manage.add_argument("--json", action="store_true")
    manage.set_defaults(func=cmd_manage)

    key = sub.add_parser("keys", help="manage Curve keys")
    key_sub = key.add_subparsers(dest="keys_command", required=True)
    generate = key_sub.add_parser("generate", help="create a key pair")
    generate.add_argument("--name", default="server", help="file stem (server, agent, ...)")
    generate.add_argument("--dir", help="directory (default HOME/keys)")
    generate.add_argument("--force", action="store_true", help="replace an existing pair")
    enroll = key_sub.add_parser("enroll", help="accept an agent's public key under a name")
    enroll.add_argument("name")
    enroll.add_argument("--key-file")
    enroll.add_argument("--key")
    revoke = key_sub.add_parser("revoke", help="stop accepting an agent")
    revoke.add_argument("name")
    key_sub.add_parser("list", help="list enrolled agents")
    key.set_defaults(func=cmd_keys)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args))
    except (UsageError, keys.KeyFileError, ServerError, ServerUnreachable, TimeoutError, ValueError) as exc:
        print(f"directord {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

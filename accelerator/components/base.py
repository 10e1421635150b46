"""What a verb (component) is: parse on the controller, execute on the agent.

A component never imports the server.  `parse` turns what a user wrote (an argument string as
in Directord's orchestrations, or a map as convert-role writes) into a plain args map plus the
local files the agent will need; `execute` runs on the agent with an `ExecContext` the agent
provides and returns a `JobResult`.
"""

from __future__ import annotations

import abc
import argparse
import io
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from accelerator.model import JobResult


class ComponentError(ValueError):
    """Arguments a verb cannot accept; the text names the verb and what is wrong."""


@dataclass(slots=True)
class Parsed:
    """Controller-side outcome of parsing: the wire args and the files to ship (sha256 -> path)."""

    args: dict[str, Any]
    uploads: dict[str, Path] = field(default_factory=dict)
    timeout: float | None = None


class ExecContext(Protocol):
    """What the agent offers a running component."""

    agent_name: str
    job_id: str
    variables: dict[str, Any]  # ARG values and registered outputs, used for templating
    environment: dict[str, str]  # ENV values, added to RUN's environment
    allowed_roots: tuple[Path, ...]  # COPY and friends may only write below these
    state_dir: Path

    def fetch_blob(self, sha256: str) -> Path:
        """Path of a local, verified copy of a blob the controller uploaded (fetched if missing)."""

    def exchange_query(self, key: str, value: Any, timeout: float) -> dict[str, Any]:
        """Send this agent's value for `key`, wait for every target's, return {agent: value}."""

    def render(self, text: str) -> str:
        """Expand {{ variables }} in text (Jinja2), or raise ComponentError naming the variable."""

    def run_module(self, request: dict[str, Any], timeout: float | None, raw: bool = False) -> JobResult:
        """Run an Ansible module in a child forked from the warm zygote.

        raw: report the process's rc and output as they are (the connection plugin hands them
        to Ansible, which interprets them itself) instead of turning the JSON into a result.
        """


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting: bad job arguments must never kill a process."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ComponentError(f"{self.prog}: {message}")


class Component(abc.ABC):
    """A verb.  Subclasses set `verb`, describe their flags in `build_parser`, and `execute`."""

    verb: ClassVar[str]
    help: ClassVar[str] = ""

    def parser(self) -> argparse.ArgumentParser:
        parser = _Parser(prog=self.verb, description=self.help, add_help=False, allow_abbrev=False)
        self.build_parser(parser)
        return parser

    @abc.abstractmethod
    def build_parser(self, parser: argparse.ArgumentParser) -> None:
        """Declare the verb's flags and positionals."""

    def parse(self, spec: str | list[str] | dict[str, Any], base_dir: Path = Path(".")) -> Parsed:
        """Validate user input into wire args; relative local paths resolve against base_dir."""
        if isinstance(spec, dict):
            argv = self.argv_from_map(spec)
        elif isinstance(spec, str):
            try:
                argv = shlex.split(spec)
            except ValueError as exc:
                raise ComponentError(f"{self.verb}: cannot split arguments: {exc}") from None
        else:
            argv = [str(item) for item in spec]
        namespace = self.parser().parse_args(argv)
        return self.finish(vars(namespace), base_dir)

    def argv_from_map(self, spec: dict[str, Any]) -> list[str]:
        """Map form -> argv: {"command": "x", "timeout": 5} becomes ["--timeout", "5", "x"]."""
        parser = self.parser()
        positionals = {a.dest: a for a in parser._actions if not a.option_strings}
        options = {a.dest: a for a in parser._actions if a.option_strings}
        argv: list[str] = []
        tail: list[str] = []
        for key, value in spec.items():
            dest = key.replace("-", "_")
            if dest in positionals:
                tail.extend(str(v) for v in (value if isinstance(value, list) else [value]))
            elif dest in options:
                flag = options[dest].option_strings[-1]
                if isinstance(options[dest], (argparse._StoreTrueAction, argparse._StoreFalseAction)):
                    if bool(value) == isinstance(options[dest], argparse._StoreTrueAction):
                        argv.append(flag)
                elif isinstance(value, dict):
                    argv.extend(item for k, v in value.items() for item in (flag, f"{k}={v}"))
                elif isinstance(value, list):
                    argv.extend(item for v in value for item in (flag, str(v)))
                else:
                    argv.extend((flag, str(value)))
            else:
                raise ComponentError(f"{self.verb}: unknown field {key!r}")
        return argv + ["--", *tail] if tail else argv

    def finish(self, args: dict[str, Any], base_dir: Path) -> Parsed:
        """Hook for verbs that must look at local files or check combinations; default: as parsed."""
        return Parsed(args=args, timeout=args.get("timeout"))

    @abc.abstractmethod
    def execute(self, args: dict[str, Any], ctx: ExecContext) -> JobResult:
        """Run on the agent; must not raise for expected failures (return a FAILED result)."""


def key_value_pairs(items: list[str] | None, verb: str, flag: str) -> dict[str, str]:
    """["A=1", "B=2"] -> {"A": "1", "B": "2"}, naming the flag when an item has no '='."""
    pairs: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ComponentError(f"{verb}: {flag} expects KEY=VALUE, got {item!r}")
        pairs[key] = value
    return pairs


def split_leading_options(text: str, parser: argparse.ArgumentParser) -> tuple[list[str], str]:
    """Split "--timeout 5 --env A=1 echo $A | wc" into (["--timeout", "5", "--env", "A=1"], "echo $A | wc").

    Verbs whose last argument is a shell command must keep that command verbatim; splitting it
    into words and joining them again would lose quoting, pipes and variables.
    """
    takes_value = {o for a in parser._actions if a.option_strings and a.nargs != 0 for o in a.option_strings}
    flags = {o for a in parser._actions if a.option_strings and a.nargs == 0 for o in a.option_strings}
    stream = io.StringIO(text)  # shlex reads it one character at a time, so tell() is our position
    lexer = shlex.shlex(stream, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    argv: list[str] = []
    position = 0
    while True:
        try:
            token = lexer.get_token()
        except ValueError as exc:
            raise ComponentError(f"{parser.prog}: cannot split arguments: {exc}") from None
        if token is None:
            return argv, ""
        if token == "--":
            return argv, text[stream.tell():].strip()
        name = token.split("=", 1)[0]
        if name in flags or (name in takes_value and "=" in token):
            argv.append(token)
        elif name in takes_value:
            value = lexer.get_token()
            if value is None:
                raise ComponentError(f"{parser.prog}: {name} expects a value")
            argv.extend((token, value))
        else:
            return argv, text[position:].strip()
        position = stream.tell()

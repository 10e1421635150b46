"""The registry of verbs.  A verb is looked up here by name; an unknown name fails loudly.

Each entry is a function that imports its component on first use: an agent that never copies
a file or runs a module never pays for what COPY or ANSIBLE import (hashlib's libcrypto alone
is 4 MB per agent process).
"""

from __future__ import annotations

from functools import cache
from typing import Callable

from accelerator.components.base import Component, ComponentError


def _run() -> type[Component]:
    from accelerator.components.run import Run

    return Run


def _arg() -> type[Component]:
    from accelerator.components.arg import Arg

    return Arg


def _env() -> type[Component]:
    from accelerator.components.arg import Env

    return Env


def _query() -> type[Component]:
    from accelerator.components.query import Query

    return Query


def _copy() -> type[Component]:
    from accelerator.components.copy import Copy

    return Copy


def _add() -> type[Component]:
    from accelerator.components.copy import Add

    return Add


def _file() -> type[Component]:
    from accelerator.components.file import File

    return File


def _write() -> type[Component]:
    from accelerator.components.write import Write

    return Write


def _wait() -> type[Component]:
    from accelerator.components.wait import Wait

    return Wait


def _service() -> type[Component]:
    from accelerator.components.service import Service

    return Service


def _pkg() -> type[Component]:
    from accelerator.components.pkg import Pkg

    return Pkg


def _ansible() -> type[Component]:
    from accelerator.components.ansible import Ansible

    return Ansible


def _exec() -> type[Component]:
    from accelerator.components.remote import Exec

    return Exec


def _put() -> type[Component]:
    from accelerator.components.remote import Put

    return Put


def _fetch() -> type[Component]:
    from accelerator.components.remote import Fetch

    return Fetch


REGISTRY: dict[str, Callable[[], type[Component]]] = {
    "RUN": _run,
    "ARG": _arg,
    "ENV": _env,
    "QUERY": _query,
    "COPY": _copy,
    "ADD": _add,
    "FILE": _file,
    "WRITE": _write,
    "WAIT": _wait,
    "SERVICE": _service,
    "PKG": _pkg,
    "ANSIBLE": _ansible,
    "EXEC": _exec,
    "PUT": _put,
    "FETCH": _fetch,
}


class UnknownVerb(ComponentError):
    pass


@cache
def component_class(verb: str) -> type[Component]:
    """The component class for `verb` (case-insensitive), imported on first use."""
    try:
        loader = REGISTRY[verb.upper()]
    except (KeyError, AttributeError):
        known = ", ".join(sorted(REGISTRY))
        raise UnknownVerb(f"unknown verb {verb!r}; known verbs: {known}") from None
    return loader()


def get(verb: str) -> Component:
    """An instance of the component for `verb`."""
    return component_class(verb)()

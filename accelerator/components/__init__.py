"""The registry of verbs.  A verb is looked up here by name; an unknown name fails loudly."""

from __future__ import annotations

from accelerator.components.ansible import Ansible
from accelerator.components.arg import Arg, Env
from accelerator.components.base import Component, ComponentError
from accelerator.components.copy import Add, Copy
from accelerator.components.pkg import Pkg
from accelerator.components.query import Query
from accelerator.components.run import Run
from accelerator.components.service import Service
from accelerator.components.wait import Wait

REGISTRY: dict[str, type[Component]] = {
    component.verb: component
    for component in (Run, Arg, Env, Query, Copy, Add, Wait, Service, Pkg, Ansible)
}


class UnknownVerb(ComponentError):
    pass


def get(verb: str) -> Component:
    """An instance of the component for `verb` (case-insensitive)."""
    try:
        return REGISTRY[verb.upper()]()
    except (KeyError, AttributeError):
        known = ", ".join(sorted(REGISTRY))
        raise UnknownVerb(f"unknown verb {verb!r}; known verbs: {known}") from None

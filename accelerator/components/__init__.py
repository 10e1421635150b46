"""The registry of verbs.  A verb is looked up here by name; an unknown name fails loudly."""

from __future__ import annotations

from accelerator.components.arg import Arg, Env
from accelerator.components.base import Component, ComponentError
from accelerator.components.query import Query
from accelerator.components.run import Run

REGISTRY: dict[str, type[Component]] = {
    component.verb: component
    for component in (Run, Arg, Env, Query)
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

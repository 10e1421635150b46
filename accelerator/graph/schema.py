"""Check service and inventory files against the published JSON Schemas before anything runs.

The schemas ship in `accelerator/schemas/` so that editors and CI can use them too.  An error
names the file, the line of the offending value and the field's path, e.g.
`web.yaml:14: tasks[2].register: 'out-1' does not match '^[A-Za-z_][A-Za-z0-9_]*$'`.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from accelerator import yamlfile
from accelerator.yamlfile import line_of


class SchemaError(ValueError):
    """A file that does not follow its schema; the text starts with FILE:LINE: FIELD."""


@cache
def schema(name: str) -> dict[str, Any]:
    """The published schema `name` (service or inventory)."""
    text = resources.files("accelerator").joinpath("schemas", f"{name}.schema.json").read_text()
    return json.loads(text)  # type: ignore[no-any-return]


@cache
def _validator(name: str) -> Any:
    import jsonschema  # only the controller validates; agents never load it

    return jsonschema.Draft202012Validator(schema(name))


def load_valid(path: Path, name: str) -> Any:
    """The document in `path`, checked against schema `name`; SchemaError names what is wrong and where."""
    try:
        document = yamlfile.load(path)
    except yamlfile.YamlFileError as exc:
        raise SchemaError(str(exc)) from None
    validate(document, name, path)
    return document


def validate(document: Any, name: str, path: Path) -> None:
    """Raise SchemaError for the first (deepest, then earliest) problem in `document`."""
    errors = list(_validator(name).iter_errors(document))
    if not errors:
        return
    error = min(errors, key=lambda e: (-len(e.absolute_path), _line(document, e.absolute_path)))
    error = _most_specific(error)
    field = _field_path(error.absolute_path) or "(top level)"
    raise SchemaError(f"{path}:{_line(document, error.absolute_path)}: {field}: {_message(error)}")


def _most_specific(error: Any) -> Any:
    """For oneOf/anyOf, the sub-error that went deepest names the real problem better."""
    while error.context:
        deeper = max(error.context, key=lambda e: len(e.absolute_path))
        if len(deeper.absolute_path) <= len(error.absolute_path) and error.validator not in ("oneOf", "anyOf"):
            break
        if len(deeper.absolute_path) < len(error.absolute_path):
            break
        error = deeper
    return error


def _line(document: Any, path: Any) -> int:
    """Line of the deepest map or list on `path` (plain strings carry no line)."""
    line = line_of(document, 1)
    node = document
    for key in path:
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            break
        line = line_of(node, line)
    return line


def _field_path(path: Any) -> str:
    text = ""
    for key in path:
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else str(key))
    return text


def _message(error: Any) -> str:
    if error.validator == "additionalProperties":
        return f"unknown field: {error.message}"
    instance = error.instance if isinstance(error.instance, dict) else {}
    if error.validator in ("oneOf", "not") and "id" in instance:
        return "a task holds one of 'jobs', 'block' (with optional 'rescue' and 'always') or 'include'"
    if error.validator in ("minProperties", "maxProperties") and "propertyNames" in error.schema:
        return "a job is a map of one verb to its arguments, e.g. '- RUN: echo hi'"
    text = str(error.message)
    return text if len(text) <= 300 else text[:300] + "..."

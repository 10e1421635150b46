"""YAML files whose maps and lists remember their line, so that every error can name FILE:LINE.

Orchestrations, services and inventories are all read through `load`; a file that cannot be
read or parsed raises `YamlFileError` with the position PyYAML reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class YamlFileError(ValueError):
    """A file that cannot be read or is not YAML; the text starts with FILE or FILE:LINE."""


class LineMap(dict):  # type: ignore[type-arg]
    """A YAML map that remembers the line it started on."""

    line = 0


class LineList(list):  # type: ignore[type-arg]
    """A YAML sequence that remembers the line it started on."""

    line = 0


class LineLoader(yaml.SafeLoader):
    """SafeLoader whose maps and lists carry their line (subclass it to add tags)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        mapping = LineMap(super().construct_mapping(node, deep=deep))
        mapping.line = node.start_mark.line + 1
        return mapping

    def construct_line_sequence(self, node: yaml.SequenceNode) -> list[Any]:
        sequence = LineList(self.construct_sequence(node, deep=True))
        sequence.line = node.start_mark.line + 1
        return sequence


LineLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    lambda loader, node: loader.construct_mapping(node, deep=True),
)
LineLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG,
    lambda loader, node: loader.construct_line_sequence(node),
)


def line_of(value: Any, default: int = 0) -> int:
    return getattr(value, "line", default) or default


def load(path: Path, loader: type[LineLoader] = LineLoader) -> Any:
    """The document in `path`, with LineMap/LineList for its maps and lists."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise YamlFileError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise YamlFileError(f"{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from None


def plain(value: Any) -> Any:
    """The same data as built-in dicts and lists (for writing back out or sending on the wire)."""
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value

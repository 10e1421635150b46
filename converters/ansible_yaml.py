"""Read the YAML of Ansible roles: maps and lists know their line; Ansible's own tags are understood.

`!unsafe` marks text Ansible must never template, and `!vault` is encrypted text.  Neither can be
carried into a service as plain text without changing its meaning, so they load as marker
objects that the translator reports (the task then stays unconverted, with that reason).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from accelerator import yamlfile
from accelerator.yamlfile import LineLoader


class RoleFileError(ValueError):
    """A role file that cannot be read; the text starts with FILE or FILE:LINE."""


class Tagged(str):
    """A scalar carrying an Ansible tag (`!unsafe`, `!vault`) that has no equivalent in a service."""

    tag = ""


class _Loader(LineLoader):
    def construct_tagged(self, node: yaml.Node) -> Tagged:
        value = Tagged(self.construct_scalar(node) if isinstance(node, yaml.ScalarNode) else "")
        value.tag = node.tag
        return value


for _tag in ("!unsafe", "!vault", "!vault-encrypted"):
    _Loader.add_constructor(_tag, lambda loader, node: loader.construct_tagged(node))


def load(path: Path) -> Any:
    try:
        return yamlfile.load(path, loader=_Loader)
    except yamlfile.YamlFileError as exc:
        raise RoleFileError(str(exc)) from None


def find_yaml(directory: Path, stem: str) -> Path | None:
    """Ansible's lookup of `main` (or another name) in a role directory: .yml, .yaml, .json, bare."""
    for suffix in (".yml", ".yaml", ".json", ""):
        candidate = directory / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def tagged_values(value: Any) -> list[Tagged]:
    """Every tagged scalar inside `value`."""
    if isinstance(value, Tagged):
        return [value]
    if isinstance(value, dict):
        return [t for item in value.values() for t in tagged_values(item)]
    if isinstance(value, list):
        return [t for item in value for t in tagged_values(item)]
    return []

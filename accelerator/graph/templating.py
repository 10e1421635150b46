"""Ansible's own templating, on the controller: `when`, loops, filters, lookups behave as in a playbook.

Tasks are templated here, host by host, and only the finished arguments travel to the agents.
Using ansible-core's Templar (rather than a Jinja environment of our own) keeps every filter,
test, lookup, `omit` and undefined-variable error exactly as the original role saw them.

Trust follows Ansible's rule: text from service and inventory files is trusted as a template;
values that come back from hosts (registered results, facts) are data and are never templated.
"""

from __future__ import annotations

from functools import cache
from typing import Any


class TemplateError(ValueError):
    """A template or condition that cannot be evaluated; the text is Ansible's message."""


@cache
def _ansible() -> Any:
    """Import the parts of ansible-core used here, once (ansible is a controller-only dependency)."""
    from ansible.errors import AnsibleError
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar, trust_as_template

    class Parts:
        pass

    parts = Parts()
    parts.AnsibleError = AnsibleError  # type: ignore[attr-defined]
    parts.Templar = Templar  # type: ignore[attr-defined]
    parts.trust = trust_as_template  # type: ignore[attr-defined]
    parts.loader = DataLoader()  # type: ignore[attr-defined]
    return parts


def trusted(value: Any) -> Any:
    """A copy of `value` whose strings Ansible will template (as strings read from a playbook)."""
    if isinstance(value, str):
        return _ansible().trust(value)
    if isinstance(value, dict):
        return {key: trusted(item) for key, item in value.items()}
    if isinstance(value, list):
        return [trusted(item) for item in value]
    return value


class Evaluator:
    """Templates and conditions against one host's variables."""

    def __init__(self, variables: dict[str, Any]) -> None:
        parts = _ansible()
        self._errors = parts.AnsibleError
        self._templar = parts.Templar(loader=parts.loader, variables=variables)

    def variables(self) -> dict[str, Any]:
        return dict(self._templar.available_variables)

    def template(self, value: Any) -> Any:
        """`value` (already trusted) with every template rendered; omitted values are removed."""
        try:
            return self._templar.template(value)
        except self._errors as exc:
            raise TemplateError(_message(exc)) from None

    def condition(self, conditions: Any) -> bool:
        """Ansible's `when` rule: a bool, one expression, or a list that must all hold."""
        items = conditions if isinstance(conditions, list) else [conditions]
        try:
            for item in items:
                if isinstance(item, bool):
                    if not item:
                        return False
                elif not self._templar.evaluate_conditional(item):
                    return False
        except self._errors as exc:
            raise TemplateError(_message(exc)) from None
        return True

    def render_file(self, source: str, relative: str, dest: str, searchpath: list[str]) -> str:
        """A template file rendered as the template action renders it.

        Same Jinja settings (trim_blocks on, trailing newline kept), the same `template_*`
        variables and `ansible_managed`, and `{% include %}` looking in the same places.
        """
        from ansible.template import generate_ansible_template_vars

        try:
            with open(source, encoding="utf-8") as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise TemplateError(f"cannot read template {source}: {exc}") from None
        variables = dict(self._templar.available_variables)
        template_vars = generate_ansible_template_vars(path=relative, fullpath=source, dest_path=dest)
        if "ansible_managed" in variables:
            template_vars.pop("ansible_managed", None)  # as the action: a user's own value wins
        variables.update(template_vars)
        paths = [p for directory in searchpath for p in (f"{directory}/templates", directory)]
        templar = self._templar.copy_with_new_env(searchpath=paths, available_variables=variables)
        try:
            rendered = templar.template(_ansible().trust(text), escape_backslashes=False,
                                        overrides={"trim_blocks": True, "lstrip_blocks": False, "newline_sequence": "\n"})
        except self._errors as exc:
            raise TemplateError(f"{relative}: {_message(exc)}") from None
        return "" if rendered is None else str(rendered)


def _message(exc: BaseException) -> str:
    text = str(getattr(exc, "message", "") or exc)
    return text.splitlines()[0] if text else type(exc).__name__

"""Notification templates: one TOML file per code and channel, rendered in Jinja2's sandbox.

``schemas/templates/<CODE>.<channel>.toml`` (``ORDER_PAID.email.toml``) holds two tables:

- ``[variables]``: every variable the template may use, with its kind: ``text`` (a
  string), ``integer`` (an ``int``, e.g. an amount in minor units), ``currency`` (a
  three-letter ISO 4217 code, upper-cased). A kind ending in ``?`` is optional: absent or
  ``null``, the template sees ``none``. Loading refuses a template that uses a variable it
  does not declare, so the declaration is the whole truth about what ``data`` needs.
- ``[message]``: ``subject``, ``text`` and ``html`` for EMAIL; ``title`` and ``text`` for
  PUSH; ``text`` for SMS.

The send route calls :meth:`TemplateCatalog.get` and :meth:`NotificationTemplate.check`
(unknown template, a missing or ill-typed variable: ``InvalidEvent``, a 400 naming it);
the worker calls :meth:`NotificationTemplate.render` with the same data.

Rendering: Jinja2's ``SandboxedEnvironment`` (a template cannot reach ``__class__``,
``__globals__`` and the like), ``StrictUndefined`` (a name that is not in the data is an
error, never an empty string), autoescaping for ``html`` only (the subject, text bodies
and push title are plain text: escaping would show ``&amp;``). A subject or title is one
line: whitespace runs, newlines included, become one space. Filter ``money``:
``{{ amount_minor | money(currency) }}`` → ``25.00 USD`` (``schemas.money``).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Final, Literal

from jinja2 import StrictUndefined, TemplateError, meta
from jinja2.sandbox import SandboxedEnvironment

from base.errors import ConfigError, InvalidEvent, PermanentError
from schemas.money import check_currency, format_minor
from schemas.notifications import Channel

__all__ = [
    "TEMPLATES_DIR",
    "NotificationTemplate",
    "RenderedMessage",
    "TemplateCatalog",
    "TemplateDataError",
    "TemplateRenderError",
    "UnknownTemplate",
    "VariableKind",
    "VariableSpec",
    "default_catalog",
    "load_catalog",
]

TEMPLATES_DIR: Final = Path(__file__).resolve().parent / "templates"

VariableKind = Literal["text", "integer", "currency"]

_KINDS: Final[frozenset[str]] = frozenset({"text", "integer", "currency"})
_CODE: Final = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_VARIABLE: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")
_PARTS: Final[dict[Channel, tuple[str, ...]]] = {
    Channel.EMAIL: ("subject", "text", "html"),
    Channel.SMS: ("text",),
    Channel.PUSH: ("title", "text"),
}
_ONE_LINE: Final = frozenset({"subject", "title"})


class UnknownTemplate(InvalidEvent):
    """No template has this code, or none for this channel."""


class TemplateDataError(InvalidEvent):
    """``data`` lacks a variable the template declares, or has one of the wrong kind;
    ``field`` is ``data.<name>``."""


class TemplateRenderError(PermanentError):
    """A template failed while rendering checked data (a bug in the template: the sandbox
    refused an attribute, a filter raised). Retrying renders the same."""


@dataclass(frozen=True)
class VariableSpec:
    name: str
    kind: VariableKind
    required: bool


@dataclass(frozen=True)
class RenderedMessage:
    """A rendered notification. EMAIL has ``subject``, ``text`` and ``html``; PUSH has
    ``title`` and ``text``; SMS has ``text`` only."""

    text: str
    subject: str | None = None
    html: str | None = None
    title: str | None = None


def _money(amount_minor: object, currency: object) -> str:
    try:
        return format_minor(amount_minor, currency)
    except ValueError as exc:
        raise TemplateRenderError(f"money filter: {exc}") from None


def _environment(*, autoescape: bool) -> SandboxedEnvironment:
    env = SandboxedEnvironment(
        undefined=StrictUndefined,
        autoescape=autoescape,
        trim_blocks=False,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )
    env.filters["money"] = _money
    return env


_TEXT_ENV: Final = _environment(autoescape=False)
_HTML_ENV: Final = _environment(autoescape=True)


class NotificationTemplate:
    """One template: a code, a channel, its declared variables and its compiled parts."""

    def __init__(
        self,
        code: str,
        channel: Channel,
        variables: Mapping[str, VariableSpec],
        parts: Mapping[str, str],
        *,
        origin: str = "<memory>",
    ) -> None:
        """Compile ``parts`` (``subject``/``text``/``html``/``title`` sources).

        :raises ConfigError: a missing or unexpected part, a syntax error, or a part that
            uses a variable ``variables`` does not declare; the message names ``origin``.
        """
        self.code = code
        self.channel = channel
        self.variables: Mapping[str, VariableSpec] = dict(variables)
        expected = _PARTS[channel]
        missing = [p for p in expected if not isinstance(parts.get(p), str)]
        extra = sorted(set(parts) - set(expected))
        if missing or extra:
            raise ConfigError(
                f"{origin}: [message] of a {channel} template has exactly "
                f"{', '.join(expected)}; missing {missing or 'none'}, unexpected {extra or 'none'}"
            )
        self._compiled = {}
        for part in expected:
            env = _HTML_ENV if part == "html" else _TEXT_ENV
            try:
                undeclared = meta.find_undeclared_variables(env.parse(parts[part]))
                self._compiled[part] = env.from_string(parts[part])
            except TemplateError as exc:
                raise ConfigError(f"{origin}: {part}: {exc}") from None
            unknown = sorted(undeclared - set(self.variables))
            if unknown:
                raise ConfigError(
                    f"{origin}: {part} uses {', '.join(unknown)}, not declared in [variables]"
                )

    def __repr__(self) -> str:
        return f"<NotificationTemplate {self.code} {self.channel}>"

    def check(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """The data the template will see: each declared variable, checked against its
        kind (currencies upper-cased, absent optional ones ``None``). Variables the
        template does not declare are dropped (a caller may send more than one
        template needs).

        :raises TemplateDataError: the first missing or ill-typed variable, by name.
        """
        checked: dict[str, Any] = {}
        for name, spec in self.variables.items():
            value = data.get(name)
            if value is None:
                if spec.required:
                    raise TemplateDataError(
                        f"template {self.code} ({self.channel}) needs data.{name} ({spec.kind})",
                        field=f"data.{name}",
                    )
                checked[name] = None
                continue
            checked[name] = _checked_value(value, spec, self.code)
        return checked

    def render(self, data: Mapping[str, Any]) -> RenderedMessage:
        """Check ``data`` (as :meth:`check`), then render every part.

        :raises TemplateDataError: as :meth:`check`.
        :raises TemplateRenderError: the template itself failed (e.g. the sandbox refused
            an attribute).
        """
        context = self.check(data)
        rendered: dict[str, str] = {}
        for part, template in self._compiled.items():
            try:
                text = template.render(context)
            except TemplateRenderError:
                raise
            except TemplateError as exc:
                raise TemplateRenderError(
                    f"template {self.code} ({self.channel}) {part}: {type(exc).__name__}: {exc}"
                ) from None
            rendered[part] = " ".join(text.split()) if part in _ONE_LINE else text.strip() + "\n"
        if self.channel is not Channel.EMAIL:
            rendered["text"] = rendered["text"].rstrip("\n")
        return RenderedMessage(**rendered)


def _checked_value(value: Any, spec: VariableSpec, code: str) -> Any:
    path = f"data.{spec.name}"
    if spec.kind == "text":
        if not isinstance(value, str):
            raise TemplateDataError(f"{path} must be a string for template {code}", field=path)
        return value
    if spec.kind == "integer":
        if type(value) is not int:
            raise TemplateDataError(
                f"{path} must be an integer for template {code} (amounts are in minor units, "
                "e.g. 2500 for 25.00)",
                field=path,
            )
        return value
    try:
        return check_currency(value)
    except ValueError as exc:
        raise TemplateDataError(f"{path}: {exc}", field=path) from None


class TemplateCatalog:
    """Every template, by (code, channel). Immutable once loaded."""

    def __init__(self, templates: Mapping[tuple[str, Channel], NotificationTemplate]) -> None:
        self._templates = dict(templates)

    def __iter__(self) -> Iterator[NotificationTemplate]:
        return iter(self._templates.values())

    def __len__(self) -> int:
        return len(self._templates)

    def codes(self) -> frozenset[str]:
        return frozenset(code for code, _ in self._templates)

    def get(self, code: str, channel: Channel | str) -> NotificationTemplate:
        """The template for ``code`` on ``channel``.

        :raises UnknownTemplate: no such code, or the code has no template for the
            channel (``field`` is ``template``, or ``channel`` for an unknown channel).
        """
        try:
            wanted = Channel(channel)
        except ValueError:
            choices = ", ".join(Channel)
            raise UnknownTemplate(
                f"unknown channel {channel!r}: one of {choices}", field="channel"
            ) from None
        template = self._templates.get((code, wanted))
        if template is not None:
            return template
        if code in self.codes():
            have = ", ".join(sorted(c for k, c in self._templates if k == code))
            raise UnknownTemplate(
                f"template {code} has no {wanted} version (it has {have})", field="template"
            )
        raise UnknownTemplate(f"unknown template {code!r}", field="template")


def load_catalog(directory: Path = TEMPLATES_DIR) -> TemplateCatalog:
    """Read and compile every ``<CODE>.<channel>.toml`` under ``directory``.

    :raises ConfigError: a file that is not named so, is not valid TOML, declares a bad
        variable or uses an undeclared one; the message names the file.
    """
    templates: dict[tuple[str, Channel], NotificationTemplate] = {}
    for path in sorted(directory.glob("*.toml")):
        template = _load_file(path)
        templates[(template.code, template.channel)] = template
    return TemplateCatalog(templates)


@cache
def default_catalog() -> TemplateCatalog:
    """The templates shipped in ``schemas/templates`` (loaded once per process)."""
    return load_catalog()


def _load_file(path: Path) -> NotificationTemplate:
    code, _, channel_name = path.name.removesuffix(".toml").partition(".")
    try:
        channel = Channel(channel_name.upper())
    except ValueError:
        channel = None
    if not _CODE.fullmatch(code) or channel is None or channel_name != channel_name.lower():
        raise ConfigError(
            f"{path}: a template file is named <CODE>.<channel>.toml, e.g. ORDER_PAID.email.toml"
        )
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    extra = sorted(set(document) - {"variables", "message"})
    if extra:
        raise ConfigError(f"{path}: unexpected tables {extra}: only [variables] and [message]")
    variables = _variables(path, document.get("variables", {}))
    message = document.get("message")
    if not isinstance(message, dict):
        raise ConfigError(f"{path}: no [message] table")
    return NotificationTemplate(code, channel, variables, message, origin=str(path))


def _variables(path: Path, table: object) -> dict[str, VariableSpec]:
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [variables] must be a table of name = kind")
    specs: dict[str, VariableSpec] = {}
    for name, kind in table.items():
        base = kind.removesuffix("?") if isinstance(kind, str) else None
        if not _VARIABLE.fullmatch(name) or base not in _KINDS:
            raise ConfigError(
                f"{path}: variable {name!r} = {kind!r}: names are lower_snake_case, kinds are "
                f"{', '.join(sorted(_KINDS))} (with ? when optional)"
            )
        assert isinstance(kind, str)
        specs[name] = VariableSpec(name, base, required=not kind.endswith("?"))  # type: ignore[arg-type]
    return specs

"""The internal API's named tokens and their scopes, validated once at start-up.

Every token has a *name* (what logs, metrics and ``updatedBy`` show: never the token) and
the scopes it holds (``ingress.scopes``). They come from three places:

- the tokens file, ``SLUICE_API_TOKENS_FILE`` (JSON or TOML, by extension)::

      [tokens.orders-service]
      digest = "sha256:37e948ec1fe378d090ac4f6e6edff50944590d886c682b95b2f0915e6703604a"
      scopes = ["events:write", "payments:write"]

      [tokens.support-desk]
      token = "…"                         # or the token itself (at least 16 characters)
      scopes = ["leads:read", "payments:read"]

  ``digest`` is ``sha256:`` and the hex SHA-256 of the token's UTF-8 bytes
  (``printf %s "$TOKEN" | sha256sum``), so the secret itself need not sit in any
  configuration;

- ``SLUICE_API_TOKENS``: the same table as JSON (``{"name": {"digest": …, "scopes": […]}}``),
  for platforms that hand secrets over as environment variables;

- the older lists, kept working: each ``INTERNAL_API_TOKEN`` token holds every scope but
  ``config:write`` and ``admin`` and is named ``internal-1``, ``internal-2``, … in list
  order; each ``ADMIN_API_TOKEN`` token holds ``admin`` (every scope) and is named
  ``admin-1``, ….

Every problem is one line of the ``ConfigError`` naming the token (never a token or a
digest), so an operator fixes them all in one go: an unknown scope, neither or both of
``token`` and ``digest``, a malformed digest, a name given twice (in the file, or in the
file and the environment), one token under two names (logs could not tell who called;
the older lists excepted, as before: a token in both is one ``admin-N``).

Only SHA-256 digests are kept once loaded; :meth:`TokenRegistry.identify` compares a
presented token's digest with every one of them, constant-time and without stopping at a
match (see ``ingress.auth``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from base.errors import ConfigError
from base.settings import Settings
from ingress.scopes import ADMIN_SCOPE, SCOPES

__all__ = [
    "DIGEST_PREFIX",
    "INTERNAL_TOKEN_SCOPES",
    "MIN_TOKEN_LENGTH",
    "ApiToken",
    "TokenRegistry",
    "load_tokens",
    "token_digest",
    "tokens_from",
]

DIGEST_PREFIX: Final = "sha256:"

INTERNAL_TOKEN_SCOPES: Final = SCOPES - {"config:write", ADMIN_SCOPE}
"""What an ``INTERNAL_API_TOKEN`` token holds: everything but changing the runtime
configuration and the admin routes, i.e. what it could do before scopes existed."""

MIN_TOKEN_LENGTH: Final = 16
"""The shortest token a named entry may carry in clear (a guessable token is no token)."""

_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_LEGACY_NAME: Final = re.compile(r"(internal|admin)-[0-9]+")
_DIGEST: Final = re.compile(r"sha256:[0-9a-fA-F]{64}")
_FIELDS: Final = frozenset({"token", "digest", "scopes"})


def token_digest(token: str) -> bytes:
    """SHA-256 of ``token``'s UTF-8 bytes: what is kept and compared."""
    # surrogatepass: a header aiohttp decoded with surrogates still hashes (and fails).
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True, slots=True)
class ApiToken:
    """One accepted token: its name, its scopes and its digest (never the token)."""

    name: str
    scopes: frozenset[str]
    digest: bytes = field(repr=False)

    def allows(self, scope: str) -> bool:
        """Whether this token may call a route needing ``scope`` (``admin``: any)."""
        return scope in self.scopes or ADMIN_SCOPE in self.scopes


class TokenRegistry:
    """The accepted tokens, held as SHA-256 digests only."""

    def __init__(self, tokens: Iterable[ApiToken] = ()) -> None:
        self._tokens = tuple(tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    def __iter__(self) -> Iterator[ApiToken]:
        return iter(self._tokens)

    def __repr__(self) -> str:
        return f"TokenRegistry({[token.name for token in self._tokens]})"

    def identify(self, presented: str) -> ApiToken | None:
        """The token ``presented`` is, or ``None``; the time taken does not depend on
        which entry matched, nor on whether one did (every digest is compared)."""
        candidate = token_digest(presented)
        found: ApiToken | None = None
        for token in self._tokens:
            # No short-circuit: every entry is compared, match or not.
            if hmac.compare_digest(candidate, token.digest):
                found = token
        return found


def load_tokens(settings: Settings) -> TokenRegistry:
    """Every token the settings name: the tokens file, ``SLUICE_API_TOKENS``, then the
    ``INTERNAL_API_TOKEN`` and ``ADMIN_API_TOKEN`` lists.

    :raises ConfigError: one line per bad entry, unreadable file or malformed variable.
    """
    problems: list[str] = []
    entries: dict[str, Any] = {}
    if settings.api_tokens_file is not None:
        try:
            entries = _read_file(settings.api_tokens_file)
        except (OSError, ValueError) as exc:
            problems.append(f"SLUICE_API_TOKENS_FILE {settings.api_tokens_file}: {exc}")
    if settings.api_tokens:
        try:
            from_env = _json_table(settings.api_tokens)
        except ValueError as exc:
            problems.append(f"malformed setting SLUICE_API_TOKENS: {exc}")
        else:
            for name in sorted(entries.keys() & from_env.keys()):
                problems.append(
                    f"token {name}: given in both SLUICE_API_TOKENS_FILE and SLUICE_API_TOKENS"
                )
            entries.update(from_env)
    registry, found = tokens_from(
        entries, internal=settings.internal_api_tokens, admin=settings.admin_api_tokens
    )
    problems.extend(found)
    if problems:
        raise ConfigError("\n".join(problems))
    return registry


def tokens_from(
    entries: Mapping[str, Any], *, internal: Sequence[str] = (), admin: Sequence[str] = ()
) -> tuple[TokenRegistry, list[str]]:
    """Validate named entries (name → fields) and add the older lists' tokens; the
    registry of the good ones and one line per problem."""
    tokens: list[ApiToken] = []
    problems: list[str] = []
    for name, fields in sorted(entries.items()):
        token, found = _entry(name, fields)
        problems.extend(f"token {name}: {problem}" for problem in found)
        if token is not None and not found:
            tokens.append(token)
    # The older lists as they always behaved: a token listed twice, or in both lists,
    # is accepted once, with the broader rights (admin).
    admins = list(_listed("admin", admin, frozenset({ADMIN_SCOPE})))
    seen = {token.digest for token in admins}
    for token in _listed("internal", internal, frozenset(INTERNAL_TOKEN_SCOPES)):
        if token.digest not in seen:
            seen.add(token.digest)
            tokens.append(token)
    tokens.extend(admins)
    first_by_digest: dict[bytes, str] = {}
    for token in tokens:
        earlier = first_by_digest.setdefault(token.digest, token.name)
        if earlier != token.name:
            problems.append(f"token {token.name}: the same token as {earlier}")
    return TokenRegistry(tokens), problems


def _listed(prefix: str, values: Sequence[str], scopes: frozenset[str]) -> Iterator[ApiToken]:
    """``prefix-N`` for the N-th token of the list; a repeat of an earlier one is skipped
    (its number stays taken, so names do not shift when a repeat is removed)."""
    listed = (value for value in values if value)
    seen: set[bytes] = set()
    for number, value in enumerate(listed, start=1):
        digest = token_digest(value)
        if digest not in seen:
            seen.add(digest)
            yield ApiToken(f"{prefix}-{number}", scopes, digest)


def _entry(name: str, fields: Any) -> tuple[ApiToken | None, list[str]]:
    """One named entry, or ``None`` and why not (lines without the name)."""
    problems: list[str] = []
    if not _NAME.fullmatch(name):
        problems.append(
            "the name must be 1-64 letters, digits, '.', '_' or '-', starting with a letter"
            " or digit"
        )
    elif _LEGACY_NAME.fullmatch(name):
        problems.append("internal-N and admin-N name INTERNAL_API_TOKEN and ADMIN_API_TOKEN tokens")
    if not isinstance(fields, Mapping):
        problems.append("must be a table with token or digest, and scopes")
        return None, problems
    problems.extend(f"unknown field {key!r}" for key in sorted(set(fields) - _FIELDS, key=str))
    digest = _digest_of(fields, problems)
    scopes = _scopes_of(fields.get("scopes"), problems)
    if digest is None or scopes is None:
        return None, problems
    return ApiToken(name, scopes, digest), problems


def _digest_of(fields: Mapping[str, Any], problems: list[str]) -> bytes | None:
    token, digest = fields.get("token"), fields.get("digest")
    if token is None and digest is None:
        problems.append("no token: give token or digest")
    elif token is not None and digest is not None:
        problems.append("give token or digest, not both")
    elif token is not None:
        # The value is never quoted: it is a secret, right or wrong.
        if not isinstance(token, str) or len(token) < MIN_TOKEN_LENGTH:
            problems.append(f"token: must be a string of at least {MIN_TOKEN_LENGTH} characters")
        elif token != token.strip():
            problems.append("token: must not begin or end with whitespace")
        else:
            return token_digest(token)
    elif not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        problems.append(f"digest: must be {DIGEST_PREFIX} and 64 hex digits")
    else:
        return bytes.fromhex(digest.removeprefix(DIGEST_PREFIX))
    return None


def _scopes_of(scopes: Any, problems: list[str]) -> frozenset[str] | None:
    if not isinstance(scopes, list) or not scopes:
        problems.append("scopes: must be a non-empty list of scopes")
        return None
    unknown = [scope for scope in scopes if scope not in SCOPES]
    for scope in unknown:
        problems.append(f"scopes: unknown scope {scope!r} (known: {', '.join(sorted(SCOPES))})")
    return None if unknown else frozenset(scopes)


def _read_file(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    data = tomllib.loads(text) if path.suffix == ".toml" else _json_object(text)
    tokens = data.get("tokens", {}) if isinstance(data, dict) else None
    if not isinstance(tokens, dict):
        raise ValueError('expected a "tokens" table of token name → settings')
    return dict(tokens)


def _json_table(text: str) -> dict[str, Any]:
    data = _json_object(text)
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object of token name → settings")
    return data


def _json_object(text: str) -> Any:
    # A name given twice in one JSON object is refused, not silently the last one
    # (TOML refuses a repeated table by itself).
    return json.loads(text, object_pairs_hook=_unique_keys)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"{key!r} is given twice")
        seen[key] = value
    return seen

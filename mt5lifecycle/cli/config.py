"""The ``serve`` configuration: one TOML file, read into typed, frozen settings.

Why it is shaped so:

- Every problem is reported, not only the first: an operator fixing a file by
  ``serve --check`` should see the whole list at once, each line naming the table
  and the field (``[backends.redis] url: ...``). ``load`` raises ``ConfigError``
  holding them all; nothing is opened or connected while reading.
- Secrets are never in the file. A token, an encryption key, an apprise URL, a Redis
  URL with a password or a PostgreSQL DSN with a password are references: ``{env =
  "NAME"}`` (an environment variable) or ``{file = "/path"}`` (a file readable by the
  service only, its content stripped of the final newline). A secret written inline
  is refused, naming the field: files get copied into tickets and repositories.
  A plain Redis URL or DSN without a password may be written inline; PostgreSQL's
  password may also come from libpq's own ``PGPASSWORD`` or ``~/.pgpass``.
- Resolved secrets live in ``Secret`` values whose ``repr`` names the reference,
  never the value, so a settings object can be logged.
- ``[policy]`` takes every ``Policy`` field and lets ``Policy`` itself judge each
  one (its own error message, under the field's name): the rules live in one place.
- Unknown tables and fields are errors: a misspelt ``max_login_attemps`` silently
  ignored would leave the default in force.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import attrs

from ..core.ids import check_instance_id
from ..core.policy import Policy
from ..errors import InvalidInstanceId

__all__ = [
    "ConfigError",
    "DuckDBSettings",
    "FleetSettings",
    "HttpSettings",
    "NotifierSettings",
    "PostgresSettings",
    "PrometheusSettings",
    "RedisSettings",
    "Secret",
    "ServeConfig",
    "TerminalSettings",
    "Token",
    "load",
    "parse",
]

TerminalKind = Literal["module", "process", "mt5linux", "fake"]
TERMINAL_KINDS: Final = ("module", "process", "mt5linux", "fake")
ROLES: Final = ("viewer", "operator")
MIN_TOKEN_LENGTH: Final = 32
"""The web app's ``MIN_SECRET_LENGTH`` (``mt5lifecycle.web.auth``, which needs starlette,
so it is not imported here): ``--check`` refuses what ``serve`` would refuse at start."""
START_METHODS: Final = ("spawn", "forkserver", "fork")
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")


class ConfigError(Exception):
    """A configuration file that cannot be used; ``problems`` names every wrong field."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{path}: {len(problems)} problem(s):\n{lines}")


@attrs.frozen(repr=False)
class Secret:
    """A value read from the environment or a file; its ``repr`` shows only where from."""

    source: str
    """``env:NAME`` or ``file:/path``."""
    value: str = attrs.field(repr=False)

    def __repr__(self) -> str:
        return f"Secret({self.source})"

    __str__ = __repr__


@attrs.frozen
class RedisSettings:
    url: Secret
    prefix: str = "instance_state"
    cluster: bool = False


@attrs.frozen
class PostgresSettings:
    dsn: Secret
    keys: tuple[Secret, ...]
    schema: str = "mt5lifecycle"

    @property
    def key_values(self) -> list[str]:
        return [key.value for key in self.keys]


@attrs.frozen
class DuckDBSettings:
    path: str
    keep_open: bool = False


@attrs.frozen
class PrometheusSettings:
    per_instance: bool = True


@attrs.frozen
class TerminalSettings:
    kind: TerminalKind
    modules: Mapping[str, str] = attrs.field(factory=dict)
    """``module``: instance id -> the name of a module with the ``MetaTrader5`` API."""
    paths: Mapping[str, str] = attrs.field(factory=dict)
    """``process``: instance id -> its ``terminal64.exe``."""
    hosts: Mapping[str, tuple[str, int]] = attrs.field(factory=dict)
    """``mt5linux``: instance id -> the (host, port) of its RPC server."""
    data_paths: Mapping[str, str] = attrs.field(factory=dict)
    module: str = "MetaTrader5"
    """``process``: the module each worker process imports."""
    call_timeout: float | None = None
    start_method: str = "spawn"

    @property
    def ids(self) -> list[str]:
        return list({**self.modules, **self.paths, **self.hosts})


@attrs.frozen
class NotifierSettings:
    kind: Literal["log", "apprise"]
    urls: tuple[Secret, ...] = ()


@attrs.frozen
class Token:
    name: str
    secret: Secret
    role: Literal["viewer", "operator"]


@attrs.frozen
class HttpSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    tokens: tuple[Token, ...] = ()


@attrs.frozen
class FleetSettings:
    workers: int = 8
    lease_ttl: float = 15.0
    poll_interval: float = 5.0
    """How often ``serve`` looks in the state store for instances added since."""
    owner: str | None = None


@attrs.frozen
class ServeConfig:
    """Everything ``serve`` needs, validated; secrets resolved but never shown."""

    path: str
    redis: RedisSettings
    postgres: PostgresSettings
    duckdb: DuckDBSettings
    prometheus: PrometheusSettings
    terminals: TerminalSettings
    policy: Policy
    notifiers: tuple[NotifierSettings, ...]
    http: HttpSettings
    fleet: FleetSettings
    log_level: str = "INFO"


# --- reading -------------------------------------------------------------------------

_MISSING: Final = object()
_ID_PATTERN: Final = "[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_ENV_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class _Reader:
    """Reads tables field by field, keeping every problem instead of stopping."""

    def __init__(self, env: Mapping[str, str], base: Path) -> None:
        self.env = env
        self.base = base
        self.problems: list[str] = []

    def problem(self, where: str, field: str | None, text: str) -> None:
        self.problems.append(f"[{where}] {field}: {text}" if field else f"[{where}] {text}")

    def table(self, parent: Mapping[str, Any], key: str, where: str, *, required: bool) -> Any:
        value = parent.get(key, _MISSING)
        if value is _MISSING:
            if required:
                self.problems.append(f"[{where}] is missing")
            return None
        if not isinstance(value, dict):
            self.problems.append(f"[{where}] must be a table, not {_kind(value)}")
            return None
        return value

    def known(self, table: Mapping[str, Any], where: str, fields: tuple[str, ...]) -> None:
        for key in table:
            if key not in fields:
                self.problem(where, key, f"unknown field (known: {', '.join(fields)})")

    def value(
        self,
        table: Mapping[str, Any],
        where: str,
        field: str,
        check: Callable[[Any], str | None],
        default: Any = _MISSING,
    ) -> Any:
        value = table.get(field, _MISSING)
        if value is _MISSING:
            if default is _MISSING:
                self.problem(where, field, "is required")
            return None if default is _MISSING else default
        problem = check(value)
        if problem is not None:
            self.problem(where, field, problem)
            return None
        return value

    def secret(self, value: Any, where: str, field: str, *, inline: str | None = None) -> Any:
        """Resolve ``{env = ...}`` / ``{file = ...}``; ``inline`` says why a string is refused."""
        if isinstance(value, str):
            self.problem(
                where,
                field,
                f'{inline or "is a secret"}: write it as {{env = "NAME"}} or '
                '{file = "/path"}, never inline',
            )
            return None
        if (
            not isinstance(value, dict)
            or len(value) != 1
            or next(iter(value))
            not in (
                "env",
                "file",
            )
        ):
            self.problem(where, field, 'must be a reference: {env = "NAME"} or {file = "/path"}')
            return None
        ((how, name),) = value.items()
        if not isinstance(name, str) or not name:
            self.problem(where, field, f"the {how} reference must be a non-empty string")
            return None
        if how == "env":
            if not _ENV_NAME.match(name):
                self.problem(where, field, f"{name!r} is not an environment variable name")
                return None
            if name not in self.env or not self.env[name]:
                self.problem(where, field, f"the environment variable {name} is not set")
                return None
            return Secret(f"env:{name}", self.env[name])
        path = Path(name) if Path(name).is_absolute() else self.base / name
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = (
                exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            )
            self.problem(where, field, f"cannot read {path}: {reason}")
            return None
        text = text.removesuffix("\n").removesuffix("\r")
        if not text:
            self.problem(where, field, f"{path} is empty")
            return None
        return Secret(f"file:{path}", text)


def _kind(value: object) -> str:
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _string(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return f"must be a non-empty string, not {_kind(value)}"
    if "\x00" in value:
        return "must not contain NUL characters"
    return None


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"must be true or false, not {_kind(value)}"


def _seconds(minimum: float, *, strict: bool = True) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be a number of seconds, not {_kind(value)}"
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):
            op = ">" if strict else ">="
            return f"must be a finite number of seconds {op} {minimum:g}, not {value}"
        return None

    return check


def _integer(low: int, high: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be an integer, not {_kind(value)}"
        if not low <= value <= high:
            return f"must be between {low} and {high}, not {value}"
        return None

    return check


def _choice(options: tuple[str, ...]) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value not in options:
            return f"must be one of {', '.join(repr(o) for o in options)}, not {value!r}"
        return None

    return check


def _prefix(value: Any) -> str | None:
    problem = _string(value)
    if problem is None and any(c in value for c in "*?[]{} \n:"):
        return f"must not contain wildcards, braces, colons or spaces, not {value!r}"
    return problem


def _schema(value: Any) -> str | None:
    problem = _string(value)
    if problem is None and not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", value):
        return f"must be a lower-case SQL identifier, not {value!r}"
    return problem


def _url_password(url: str) -> bool:
    try:
        return bool(urlsplit(url).password)
    except ValueError:
        return False


def _dsn_password(dsn: str) -> bool:
    if dsn.startswith(("postgres://", "postgresql://")):
        return _url_password(dsn) or "password=" in urlsplit(dsn).query
    return re.search(r"(^|\s)password\s*=", dsn) is not None


def _key_problem(key: str) -> str | None:
    try:
        raw = base64.urlsafe_b64decode(key.encode("ascii"))
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return "is not a key from mt5lifecycle generate-key (URL-safe base64)"
    if len(raw) != 32:
        return f"is not a key from mt5lifecycle generate-key (32 bytes, not {len(raw)})"
    return None


def _ids(r: _Reader, table: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A table keyed by instance id, the bad ids reported."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        try:
            out[check_instance_id(key)] = value
        except InvalidInstanceId:
            r.problem(where, key, f"is not a valid instance id ({_ID_PATTERN})")
    return out


def _redis(r: _Reader, backends: Mapping[str, Any]) -> RedisSettings | None:
    where = "backends.redis"
    t = r.table(backends, "redis", where, required=True)
    if t is None:
        return None
    r.known(t, where, ("url", "prefix", "cluster"))
    url: Secret | None = None
    raw = t.get("url", _MISSING)
    if raw is _MISSING:
        r.problem(where, "url", "is required")
    elif isinstance(raw, str):
        if not raw.startswith(("redis://", "rediss://", "unix://")):
            r.problem(where, "url", "must start with redis://, rediss:// or unix://")
        elif _url_password(raw):
            r.secret(raw, where, "url", inline="holds a password")
        else:
            url = Secret("inline", raw)
    else:
        url = r.secret(raw, where, "url")
        if url is not None and not url.value.startswith(("redis://", "rediss://", "unix://")):
            r.problem(where, "url", f"{url.source} must hold a redis://, rediss:// or unix:// URL")
            url = None
    prefix = r.value(t, where, "prefix", _prefix, "instance_state")
    cluster = r.value(t, where, "cluster", _boolean, False)
    if url is None or prefix is None or cluster is None:
        return None
    return RedisSettings(url=url, prefix=prefix, cluster=cluster)


def _postgres(r: _Reader, backends: Mapping[str, Any]) -> PostgresSettings | None:
    where = "backends.postgres"
    t = r.table(backends, "postgres", where, required=True)
    if t is None:
        return None
    r.known(t, where, ("dsn", "keys", "schema"))
    dsn: Secret | None = None
    raw = t.get("dsn", _MISSING)
    if raw is _MISSING:
        r.problem(where, "dsn", "is required")
    elif isinstance(raw, str):
        if _dsn_password(raw):
            r.secret(
                raw,
                where,
                "dsn",
                inline="holds a password (leave it out and use PGPASSWORD or ~/.pgpass, or "
                "give the whole DSN by reference)",
            )
        elif not raw.strip():
            r.problem(where, "dsn", "must be a non-empty connection string")
        else:
            dsn = Secret("inline", raw)
    else:
        dsn = r.secret(raw, where, "dsn")
    keys: list[Secret] = []
    raw_keys = t.get("keys", _MISSING)
    if raw_keys is _MISSING:
        r.problem(where, "keys", 'is required: keys = [{env = "MT5LIFECYCLE_KEYS"}]')
    else:
        refs = raw_keys if isinstance(raw_keys, list) else [raw_keys]
        if not refs:
            r.problem(where, "keys", "must name at least one key")
        for index, ref in enumerate(refs):
            field = "keys" if not isinstance(raw_keys, list) else f"keys[{index}]"
            secret = r.secret(ref, where, field, inline="is an encryption key")
            if secret is None:
                continue
            # One reference may hold a comma-separated list, as MT5LIFECYCLE_KEYS does.
            for part in (k.strip() for k in secret.value.split(",")):
                if not part:
                    continue
                problem = _key_problem(part)
                if problem is not None:
                    r.problem(where, field, f"a key in {secret.source} {problem}")
                else:
                    keys.append(Secret(secret.source, part))
    schema = r.value(t, where, "schema", _schema, "mt5lifecycle")
    if (
        dsn is None
        or not keys
        or schema is None
        or any(p.startswith(f"[{where}]") for p in r.problems)
    ):
        return None
    return PostgresSettings(dsn=dsn, keys=tuple(keys), schema=schema)


def _duckdb(r: _Reader, backends: Mapping[str, Any]) -> DuckDBSettings | None:
    where = "backends.duckdb"
    t = r.table(backends, "duckdb", where, required=True)
    if t is None:
        return None
    r.known(t, where, ("path", "keep_open"))
    path = r.value(t, where, "path", _string)
    keep_open = r.value(t, where, "keep_open", _boolean, False)
    if path is None or keep_open is None:
        return None
    if path != ":memory:" and not Path(path).is_absolute():
        path = str(r.base / path)
    return DuckDBSettings(path=path, keep_open=keep_open)


def _prometheus(r: _Reader, backends: Mapping[str, Any]) -> PrometheusSettings | None:
    where = "backends.prometheus"
    t = r.table(backends, "prometheus", where, required=False)
    if t is None:
        return PrometheusSettings()
    r.known(t, where, ("per_instance",))
    per_instance = r.value(t, where, "per_instance", _boolean, True)
    return None if per_instance is None else PrometheusSettings(per_instance=per_instance)


def _terminals(r: _Reader, doc: Mapping[str, Any]) -> TerminalSettings | None:
    where = "terminals"
    t = r.table(doc, "terminals", where, required=True)
    if t is None:
        return None
    kind = r.value(t, where, "kind", _choice(TERMINAL_KINDS))
    fields = {
        "module": ("kind", "modules", "data_paths"),
        "process": ("kind", "paths", "module", "call_timeout", "start_method", "data_paths"),
        "mt5linux": ("kind", "hosts", "data_paths"),
        "fake": ("kind",),
    }.get(kind or "", ("kind",))
    if kind is not None:
        r.known(t, where, fields)
    mapping_name = {"module": "modules", "process": "paths", "mt5linux": "hosts"}.get(kind or "")
    entries: dict[str, Any] = {}
    if mapping_name is not None:
        table = r.table(t, mapping_name, f"terminals.{mapping_name}", required=True)
        if table is not None:
            entries = _ids(r, table, f"terminals.{mapping_name}")
            if not entries:
                r.problem(f"terminals.{mapping_name}", None, "names no instance")
    modules: dict[str, str] = {}
    paths: dict[str, str] = {}
    hosts: dict[str, tuple[str, int]] = {}
    if kind == "module":
        owner: dict[str, str] = {}
        for instance_id, name in entries.items():
            problem = _string(name)
            if problem is not None:
                r.problem("terminals.modules", instance_id, problem)
                continue
            if name in owner:
                r.problem(
                    "terminals.modules",
                    instance_id,
                    f"the module {name!r} is already {owner[name]}'s: a MetaTrader5 module "
                    'drives one terminal per process (use kind = "process" for several)',
                )
                continue
            owner[name] = instance_id
            modules[instance_id] = name
    elif kind == "process":
        for instance_id, path in entries.items():
            problem = _string(path)
            if problem is not None:
                r.problem("terminals.paths", instance_id, problem)
            else:
                paths[instance_id] = path
    elif kind == "mt5linux":
        for instance_id, entry in entries.items():
            at = f"terminals.hosts.{instance_id}"
            if not isinstance(entry, dict):
                r.problem("terminals.hosts", instance_id, 'must be {host = "...", port = N}')
                continue
            r.known(entry, at, ("host", "port"))
            host = r.value(entry, at, "host", _string)
            port = r.value(entry, at, "port", _integer(1, 65535))
            if host is not None and port is not None:
                hosts[instance_id] = (host, port)
    data_paths: dict[str, str] = {}
    if "data_paths" in fields:
        table = r.table(t, "data_paths", "terminals.data_paths", required=False)
        for instance_id, path in _ids(r, table or {}, "terminals.data_paths").items():
            problem = _string(path)
            if problem is not None:
                r.problem("terminals.data_paths", instance_id, problem)
            else:
                data_paths[instance_id] = path
    module = r.value(t, where, "module", _string, "MetaTrader5") if kind == "process" else None
    timeout = r.value(t, where, "call_timeout", _seconds(0.0), None) if kind == "process" else None
    start = (
        r.value(t, where, "start_method", _choice(START_METHODS), "spawn")
        if kind == "process"
        else "spawn"
    )
    if kind is None or any(p.startswith("[terminals") for p in r.problems):
        return None
    return TerminalSettings(
        kind=kind,
        modules=modules,
        paths=paths,
        hosts=hosts,
        data_paths=data_paths,
        module=module or "MetaTrader5",
        call_timeout=None if timeout is None else float(timeout),
        start_method=start or "spawn",
    )


_POLICY_FIELDS: Final = tuple(a.name for a in attrs.fields(Policy))


def _policy(r: _Reader, doc: Mapping[str, Any]) -> Policy | None:
    where = "policy"
    t = r.table(doc, "policy", where, required=False)
    if t is None:
        return Policy() if "policy" not in doc else None
    r.known(t, where, _POLICY_FIELDS)
    good: dict[str, Any] = {}
    for field, value in t.items():
        if field not in _POLICY_FIELDS:
            continue
        try:
            Policy(**{field: value})
        except (ValueError, TypeError) as exc:
            # Policy's own words ("Policy.max_login_attempts must be ..."), under the
            # field's name once.
            r.problem(where, field, str(exc).removeprefix(f"Policy.{field} "))
        else:
            good[field] = value
    if len(good) != len(t):
        return None
    try:
        return Policy(**good)
    except (ValueError, TypeError) as exc:
        r.problem(where, None, str(exc))
        return None


def _notifiers(r: _Reader, doc: Mapping[str, Any]) -> tuple[NotifierSettings, ...] | None:
    raw = doc.get("notifiers", _MISSING)
    if raw is _MISSING:
        return (NotifierSettings(kind="log"),)
    if not isinstance(raw, list) or not all(isinstance(n, dict) for n in raw):
        r.problems.append('[[notifiers]] must be an array of tables ([[notifiers]] kind = "log")')
        return None
    out: list[NotifierSettings] = []
    before = len(r.problems)
    for index, entry in enumerate(raw):
        where = f"notifiers[{index}]"
        kind = r.value(entry, where, "kind", _choice(("log", "apprise")))
        if kind == "log":
            r.known(entry, where, ("kind",))
            out.append(NotifierSettings(kind="log"))
        elif kind == "apprise":
            r.known(entry, where, ("kind", "urls"))
            urls_raw = entry.get("urls", _MISSING)
            if urls_raw is _MISSING:
                r.problem(where, "urls", 'is required: urls = [{env = "MT5LIFECYCLE_APPRISE_URL"}]')
                continue
            refs = urls_raw if isinstance(urls_raw, list) else [urls_raw]
            urls: list[Secret] = []
            for i, ref in enumerate(refs):
                field = f"urls[{i}]" if isinstance(urls_raw, list) else "urls"
                secret = r.secret(
                    ref, where, field, inline="is a notification URL (URLs hold tokens)"
                )
                if secret is not None:
                    # A file may list one URL a line.
                    urls.extend(
                        Secret(secret.source, line.strip())
                        for line in secret.value.splitlines()
                        if line.strip() and not line.strip().startswith("#")
                    )
            if not urls and len(r.problems) == before:
                r.problem(where, "urls", "names no URL")
            out.append(NotifierSettings(kind="apprise", urls=tuple(urls)))
    return None if len(r.problems) != before else tuple(out)


def _http(r: _Reader, doc: Mapping[str, Any]) -> HttpSettings | None:
    where = "http"
    t = r.table(doc, "http", where, required=False)
    if t is None:
        return HttpSettings() if "http" not in doc else None
    r.known(t, where, ("host", "port", "tokens"))
    host = r.value(t, where, "host", _string, "127.0.0.1")
    port = r.value(t, where, "port", _integer(0, 65535), 8080)
    tokens: list[Token] = []
    before = len(r.problems)
    table = r.table(t, "tokens", "http.tokens", required=False)
    for name, entry in (table or {}).items():
        at = f"http.tokens.{name}"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
            r.problem("http.tokens", name, "a token's name must be letters, digits, . _ -")
            continue
        if not isinstance(entry, dict):
            r.problem("http.tokens", name, 'must be {role = "...", token = {env = "..."}}')
            continue
        r.known(entry, at, ("role", "token"))
        role = r.value(entry, at, "role", _choice(ROLES))
        raw = entry.get("token", _MISSING)
        if raw is _MISSING:
            r.problem(at, "token", "is required")
            continue
        secret = r.secret(raw, at, "token", inline="is a token")
        if secret is not None and len(secret.value) < MIN_TOKEN_LENGTH:
            r.problem(
                at,
                "token",
                f"{secret.source} is shorter than {MIN_TOKEN_LENGTH} characters (python -c "
                '"import secrets; print(secrets.token_urlsafe(32))")',
            )
            secret = None
        if role is not None and secret is not None:
            tokens.append(Token(name=name, secret=secret, role=role))
    if host is None or port is None or len(r.problems) != before:
        return None
    return HttpSettings(host=host, port=port, tokens=tuple(tokens))


def _fleet(r: _Reader, doc: Mapping[str, Any]) -> FleetSettings | None:
    where = "fleet"
    t = r.table(doc, "fleet", where, required=False)
    if t is None:
        return FleetSettings() if "fleet" not in doc else None
    r.known(t, where, ("workers", "lease_ttl", "poll_interval", "owner"))
    workers = r.value(t, where, "workers", _integer(1, 1024), 8)
    lease_ttl = r.value(t, where, "lease_ttl", _seconds(0.0), 15.0)
    poll = r.value(t, where, "poll_interval", _seconds(0.0), 5.0)
    owner = r.value(t, where, "owner", _string, None)
    if workers is None or lease_ttl is None or poll is None:
        return None
    return FleetSettings(
        workers=workers, lease_ttl=float(lease_ttl), poll_interval=float(poll), owner=owner
    )


_TOP: Final = ("backends", "terminals", "policy", "notifiers", "http", "fleet", "log")


def parse(
    text: str, *, path: str = "<config>", env: Mapping[str, str] | None = None
) -> ServeConfig:
    """Read a configuration from TOML text; raise ``ConfigError`` naming every problem."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [f"not valid TOML: {exc}"]) from None
    r = _Reader(
        os.environ if env is None else env, Path(path).parent if path != "<config>" else Path.cwd()
    )
    for key in doc:
        if key not in _TOP:
            r.problems.append(f"[{key}] unknown table (known: {', '.join(_TOP)})")
    backends = r.table(doc, "backends", "backends", required=True) or {}
    if backends:
        r.known(backends, "backends", ("redis", "postgres", "duckdb", "prometheus"))
    redis = _redis(r, backends) if backends else None
    postgres = _postgres(r, backends) if backends else None
    duckdb = _duckdb(r, backends) if backends else None
    prometheus = _prometheus(r, backends)
    terminals = _terminals(r, doc)
    policy = _policy(r, doc)
    notifiers = _notifiers(r, doc)
    http = _http(r, doc)
    fleet = _fleet(r, doc)
    log_table = r.table(doc, "log", "log", required=False) or {}
    r.known(log_table, "log", ("level",))
    level = r.value(log_table, "log", "level", _choice(LOG_LEVELS), "INFO")
    if fleet is not None and policy is not None and fleet.lease_ttl <= 0:
        r.problem("fleet", "lease_ttl", "must be > 0")
    if r.problems:
        raise ConfigError(path, r.problems)
    assert redis and postgres and duckdb and prometheus and terminals and policy
    assert notifiers is not None and http is not None and fleet is not None and level
    return ServeConfig(
        path=path,
        redis=redis,
        postgres=postgres,
        duckdb=duckdb,
        prometheus=prometheus,
        terminals=terminals,
        policy=policy,
        notifiers=notifiers,
        http=http,
        fleet=fleet,
        log_level=level,
    )


def load(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> ServeConfig:
    """Read the configuration file at ``path``; raise ``ConfigError`` naming every problem."""
    name = os.fspath(path)
    try:
        text = Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(name, [f"cannot read the file: {reason}"]) from None
    return parse(text, path=str(Path(name).absolute()), env=env)

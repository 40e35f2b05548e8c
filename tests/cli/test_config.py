"""``serve``'s TOML configuration: good files read, bad ones refused naming every field."""

from __future__ import annotations

from pathlib import Path

import pytest

from mt5lifecycle import Policy
from mt5lifecycle.adapters.postgres import PostgresCredentialStore
from mt5lifecycle.cli.config import ConfigError, Secret, load, parse

from .conftest import ROOT, run_cli

KEY = PostgresCredentialStore.generate_key()
TOKEN = "t0ken-of-thirty-two-characters-at-least"
ENV = {"KEYS": KEY, "TOKEN": TOKEN, "VIEW": "v1ewer-token-long-enough-for-the-web-app"}

GOOD = """
[backends.redis]
url = "redis://127.0.0.1:6379/0"
prefix = "ops"
[backends.postgres]
dsn = "host=127.0.0.1 user=postgres dbname=postgres"
schema = "ops_schema"
keys = [{env = "KEYS"}]
[backends.duckdb]
path = "archive.duckdb"
[terminals]
kind = "process"
module = "mt5lifecycle.testing.fake_mt5"
call_timeout = 20
[terminals.paths]
acc-1 = 'C:\\MT5\\acc-1\\terminal64.exe'
acc-2 = 'C:\\MT5\\acc-2\\terminal64.exe'
[policy]
max_login_attempts = 4
login_backoff = [1, 2]
[fleet]
poll_interval = 1.5
[[notifiers]]
kind = "log"
[http]
port = 9000
[http.tokens.ops]
role = "operator"
token = {env = "TOKEN"}
[http.tokens.wall]
role = "viewer"
token = {file = "wall.token"}
"""


def test_a_good_file_is_read_into_typed_settings(tmp_path: Path) -> None:
    (tmp_path / "wall.token").write_text(
        "w4ll-token-from-a-file-long-enough-for-the-web\n", encoding="utf-8"
    )
    path = tmp_path / "serve.toml"
    path.write_text(GOOD, encoding="utf-8")
    config = load(path, env=ENV)
    assert config.redis.url == Secret("inline", "redis://127.0.0.1:6379/0")
    assert config.redis.prefix == "ops"
    assert config.postgres.key_values == [KEY]
    assert config.postgres.schema == "ops_schema"
    assert config.duckdb.path == str(tmp_path / "archive.duckdb")
    assert config.terminals.kind == "process"
    assert dict(config.terminals.paths) == {
        "acc-1": r"C:\MT5\acc-1\terminal64.exe",
        "acc-2": r"C:\MT5\acc-2\terminal64.exe",
    }
    assert config.terminals.call_timeout == 20.0
    assert config.policy == Policy(max_login_attempts=4, login_backoff=(1.0, 2.0))
    assert config.fleet.poll_interval == 1.5
    assert [(t.name, t.role, t.secret.value) for t in config.http.tokens] == [
        ("ops", "operator", TOKEN),
        ("wall", "viewer", "w4ll-token-from-a-file-long-enough-for-the-web"),
    ]
    # Secrets never show in a repr: a settings object may be logged.
    shown = repr(config)
    assert TOKEN not in shown and KEY not in shown and "w4ll" not in shown
    assert "env:TOKEN" in shown


def test_defaults_fill_what_a_minimal_file_leaves_out() -> None:
    config = parse(
        """
        [backends.redis]
        url = {env = "REDIS"}
        [backends.postgres]
        dsn = {env = "DSN"}
        keys = {env = "KEYS"}
        [backends.duckdb]
        path = "/var/lib/mt5lifecycle/archive.duckdb"
        [terminals]
        kind = "fake"
        """,
        env={
            "REDIS": "redis://:pw@127.0.0.1:6379/0",
            "DSN": "host=db password=secret",
            "KEYS": f"{KEY}, {PostgresCredentialStore.generate_key()}",
        },
    )
    assert config.policy == Policy()
    assert config.redis.url.value == "redis://:pw@127.0.0.1:6379/0"
    assert len(config.postgres.keys) == 2
    assert config.http.host == "127.0.0.1" and config.http.port == 8080
    assert config.http.tokens == ()
    assert [n.kind for n in config.notifiers] == ["log"]
    assert config.fleet.workers == 8
    assert not config.duckdb.keep_open


BAD = """
[backends.redis]
url = "redis://:hunter2@127.0.0.1:6379/0"
prefix = "bad prefix"
cluster = "yes"
[backends.postgres]
dsn = "host=db user=ops password=hunter3"
keys = ["inline-key"]
[backends.duckdb]
paht = "typo.duckdb"
[terminals]
kind = "module"
[terminals.modules]
acc-1 = "MetaTrader5"
acc-2 = "MetaTrader5"
"bad id!" = "x"
[policy]
max_login_attempts = 0
login_backoff = []
max_restarts = -1
connection_check_interval = "60"
max_login_attemps = 5
[fleet]
workers = 0
[[notifiers]]
kind = "apprise"
urls = ["tgram://bottoken/chat"]
[http]
port = 70000
[http.tokens.ops]
role = "admin"
token = "inline-token-value-here"
[http.tokens.dash]
role = "viewer"
token = {env = "UNSET_TOKEN"}
[extra]
x = 1
"""


def test_a_bad_file_names_every_wrong_field_and_no_secret() -> None:
    with pytest.raises(ConfigError) as caught:
        parse(BAD, path="bad.toml", env={})
    problems = caught.value.problems
    expected = [
        "[extra] unknown table",
        "[backends.redis] url: holds a password: write it as {env",
        "[backends.redis] prefix: must not contain",
        "[backends.redis] cluster: must be true or false, not a string",
        "[backends.postgres] dsn: holds a password",
        "[backends.postgres] keys[0]: is an encryption key: write it as {env",
        "[backends.duckdb] paht: unknown field",
        "[backends.duckdb] path: is required",
        "[terminals.modules] acc-2: the module 'MetaTrader5' is already acc-1's",
        "[terminals.modules] bad id!: is not a valid instance id",
        "[policy] max_login_attemps: unknown field",
        "[policy] max_login_attempts: must be at least 1, not 0",
        "[policy] login_backoff: must not be empty",
        "[policy] max_restarts: must be at least 0, not -1",
        "[policy] connection_check_interval: must be a number of seconds",
        "[notifiers[0]] urls[0]: is a notification URL (URLs hold tokens)",
        "[http] port: must be between 0 and 65535, not 70000",
        "[http.tokens.ops] role: must be one of 'viewer', 'operator', not 'admin'",
        "[http.tokens.ops] token: is a token: write it as {env",
        "[http.tokens.dash] token: the environment variable UNSET_TOKEN is not set",
        "[fleet] workers: must be between 1 and 1024, not 0",
    ]
    for start in expected:
        assert any(p.startswith(start) for p in problems), (start, problems)
    assert len(problems) == len(expected), problems
    text = str(caught.value)
    for secret in ("hunter2", "hunter3", "inline-key", "bottoken", "inline-token-value"):
        assert secret not in text


def test_not_toml_and_a_missing_file_are_one_problem_each(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse("[backends\n", env={})
    with pytest.raises(ConfigError, match="cannot read the file"):
        load(tmp_path / "none.toml", env={})
    with pytest.raises(ConfigError) as caught:
        parse("", env={})
    assert caught.value.problems == ["[backends] is missing", "[terminals] is missing"]


def test_a_reference_to_an_empty_or_missing_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n", encoding="utf-8")
    text = GOOD.replace('{file = "wall.token"}', '{file = "empty"}').replace(
        '[{env = "KEYS"}]', '[{file = "/nonexistent/keys"}]'
    )
    with pytest.raises(ConfigError) as caught:
        parse(text, path=str(tmp_path / "serve.toml"), env=ENV)
    assert caught.value.problems == [
        "[backends.postgres] keys[0]: cannot read /nonexistent/keys: No such file or directory",
        f"[http.tokens.wall] token: {tmp_path / 'empty'} is empty",
    ]


def test_a_key_that_is_not_a_key_is_refused_without_showing_it() -> None:
    text = GOOD.replace('{file = "wall.token"}', '{env = "VIEW"}')
    with pytest.raises(ConfigError) as caught:
        parse(text, env={**ENV, "KEYS": "not-a-key-at-all"})
    assert caught.value.problems == [
        "[backends.postgres] keys[0]: a key in env:KEYS is not a key from mt5lifecycle "
        "generate-key (32 bytes, not 12)"
    ]
    assert "not-a-key-at-all" not in str(caught.value)


def test_serve_check_exits_0_for_a_good_file_and_2_naming_every_field(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(GOOD.replace('{file = "wall.token"}', '{env = "VIEW"}'), encoding="utf-8")
    done = run_cli("serve", "--check", str(good), env=ENV)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{good}: OK\n")
    assert "terminals:   process, 2 instance(s)" in done.stdout
    assert "ops (operator, env:TOKEN)" in done.stdout
    assert TOKEN not in done.stdout + done.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD, encoding="utf-8")
    refused = run_cli("serve", "--check", str(bad))
    assert refused.returncode == 2
    assert refused.stdout == ""
    lines = refused.stderr.splitlines()
    assert lines[0] == f"mt5lifecycle: error: {bad}: 21 problem(s):"
    assert len(lines) == 22
    assert "Traceback" not in refused.stderr


def test_the_shipped_example_config_is_valid() -> None:
    env = {
        "MT5LIFECYCLE_KEYS": KEY,
        "MT5LIFECYCLE_TOKEN_OPS": TOKEN,
        "MT5LIFECYCLE_TOKEN_DASHBOARD": TOKEN + "-2",
    }
    config = load(ROOT / "examples" / "serve.toml", env=env)
    assert config.terminals.kind == "fake"
    assert {t.name for t in config.http.tokens} == {"ops", "dashboard"}


def test_a_token_the_web_app_would_refuse_is_refused_by_the_check() -> None:
    """``--check`` and ``serve`` agree: a token shorter than the web app's minimum is a
    problem of the file, not a crash when ``serve`` starts its API."""
    from mt5lifecycle.cli.config import MIN_TOKEN_LENGTH
    from mt5lifecycle.web.auth import MIN_SECRET_LENGTH

    assert MIN_TOKEN_LENGTH == MIN_SECRET_LENGTH
    short = GOOD.replace('token = {env = "TOKEN"}', 'token = {env = "SHORT"}', 1)
    assert short != GOOD
    with pytest.raises(ConfigError) as caught:
        parse(short, path="serve.toml", env={**ENV, "SHORT": "x" * (MIN_TOKEN_LENGTH - 1)})
    ops = [p for p in caught.value.problems if p.startswith("[http.tokens.ops]")]
    assert ops == [
        f"[http.tokens.ops] token: env:SHORT is shorter than {MIN_TOKEN_LENGTH} characters "
        '(python -c "import secrets; print(secrets.token_urlsafe(32))")'
    ]
    assert "x" * (MIN_TOKEN_LENGTH - 1) not in str(caught.value)

"""Hostile input over every field of the API and the console's forms (hypothesis).

Ids, logins, servers, passwords with quotes, newlines, NULs, lone surrogates and
10 kB strings, in the JSON bodies, the paths and the query strings. Whatever comes,
the answer is never a 500, and the password (marked with this run's unique marker)
never shows in an answer, a header, a log line at DEBUG, the archive, the audit or a
notification.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import OPERATOR, World, serving

MARK = f"HOSTILE{uuid.uuid4().hex}"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')

nasty = st.sampled_from(
    ['"', "'", "\\", "\n", "\r\n", "\x00", "\u2028", "</script>", "{{ 7*7 }}", "%s", "\ud800", " "]
)
short_text = st.text(max_size=40)
long_text = st.builds(lambda c, n: c * n, st.characters(), st.integers(9_000, 10_240))
text = st.one_of(
    short_text, nasty, long_text, st.lists(st.one_of(short_text, nasty), max_size=6).map("".join)
)
json_value = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    text,
    st.lists(st.integers(), max_size=3),
    st.dictionaries(short_text, st.integers(), max_size=2),
)
in_url = text.map(lambda s: s[:300])
"""What a URL can carry: 300 characters of 4 UTF-8 bytes each, percent-encoded, 4 to a
query, stay under the ~16 kB request line uvicorn (h11) reads before any app sees it."""
ids = st.one_of(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True), text)
passwords = st.tuples(text, text).map(lambda pair: pair[0][:50] + MARK + pair[1][:50])
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")
HYPOTHESIS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def hostile() -> Iterator[tuple[World, httpx.Client]]:
    world = World()
    world.account("acc-1")
    world.run(1)
    with serving(world.app) as url:
        world.url = url
        with world.client() as client:
            yield world, client
    assert world.fleet is not None
    world.fleet.close()


@pytest.fixture(autouse=True)
def _every_logger_at_debug(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)
    yield
    assert MARK not in caplog.text
    for record in caplog.records:
        assert MARK not in record.getMessage()


def sent(client: httpx.Client, method: str, path: str, body: Any = None) -> httpx.Response:
    content = None
    if body is not None:
        content = json.dumps(body, ensure_ascii=True).encode()
    response = client.request(
        method, path, content=content, headers={"Content-Type": "application/json"}
    )
    check(response)
    return response


def check(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text[:300]
    assert MARK not in response.text
    assert all(MARK not in value for value in response.headers.values())
    if response.status_code >= 400 and response.headers.get("content-type") == "application/json":
        assert set(response.json()) >= {"error", "message"}


def raw_query(value: str) -> str:
    """Percent-encoded as sent, lone surrogates included (as bytes no UTF-8 decoder takes)."""
    return quote(value.encode("utf-8", "surrogatepass"), safe="")


def post_form(client: httpx.Client, path: str, data: dict[str, str]) -> httpx.Response:
    """A form posted as a browser would, lone surrogates sent as the bytes they make."""
    body = urlencode(data, encoding="utf-8", errors="surrogatepass").encode("ascii")
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    return client.post(path, content=body, headers=headers)


def nothing_leaked(world: World) -> None:
    assert MARK not in world.everything_archived()
    assert all(MARK not in repr(n) for n in world.notifier.notifications)


@HYPOTHESIS
@given(instance_id=ids, login=json_value, server=st.one_of(text, json_value), password=passwords)
def test_adding_an_account(
    hostile: tuple[World, httpx.Client], instance_id: str, login: Any, server: Any, password: str
) -> None:
    world, client = hostile
    body = {"id": instance_id, "login": login, "server": server, "password": password}
    response = sent(client, "POST", "/api/instances", body)
    assert response.status_code in (201, 409, 413, 422)
    nothing_leaked(world)


@HYPOTHESIS
@given(
    body=st.dictionaries(st.sampled_from(["login", "server", "password", "id", "x"]), json_value),
    password=passwords,
)
def test_replacing_credentials(
    hostile: tuple[World, httpx.Client], body: dict[str, Any], password: str
) -> None:
    world, client = hostile
    body["password"] = password
    response = sent(client, "PUT", "/api/instances/acc-1/credentials", body)
    assert response.status_code in (204, 413, 422)
    nothing_leaked(world)


@HYPOTHESIS
@given(
    instance_id=ids.map(lambda s: s[:300]),
    force=json_value,
    confirm=json_value,
    limit=in_url,
    status=in_url,
)
def test_paths_queries_and_action_bodies(
    hostile: tuple[World, httpx.Client],
    instance_id: str,
    force: Any,
    confirm: Any,
    limit: str,
    status: str,
) -> None:
    world, client = hostile
    path = "/api/instances/" + raw_query(instance_id)
    for method, suffix, body in (
        ("GET", "", None),
        ("POST", "/reset", {"force": force}),
        ("POST", "/disable", None),
        ("POST", "/confirm-closure", {"confirm": confirm}),
        ("PUT", "/credentials", {"login": force, "server": confirm, "password": MARK}),
    ):
        response = sent(client, method, path + suffix, body)
        # 307: an id ending in "/" is sent to the path without it.
        assert response.status_code in (200, 204, 307, 404, 405, 409, 413, 422), response.text[:200]
    status_q, limit_q = raw_query(status), raw_query(limit)
    check(client.get(f"/api/instances?status={status_q}"))
    check(client.get(f"/api/instances/acc-1?limit={limit_q}"))
    check(client.get(f"/?q={status_q}&status={status_q}&sort={limit_q}&page={limit_q}"))
    nothing_leaked(world)


@HYPOTHESIS
@given(
    raw=st.one_of(st.binary(max_size=300), text.map(lambda s: s.encode("utf-8", "surrogatepass")))
)
def test_raw_bodies(hostile: tuple[World, httpx.Client], raw: bytes) -> None:
    _, client = hostile
    for path in (
        "/api/instances",
        "/api/instances/acc-1/reset",
        "/api/instances/acc-1/confirm-closure",
    ):
        response = client.post(path, content=raw, headers={"Content-Type": "application/json"})
        check(response)
        assert response.status_code in (200, 201, 409, 413, 422)


@HYPOTHESIS
@given(instance_id=ids, login=text, server=text, password=passwords, token=text)
def test_console_forms(
    hostile: tuple[World, httpx.Client],
    instance_id: str,
    login: str,
    server: str,
    password: str,
    token: str,
) -> None:
    world, _ = hostile
    with httpx.Client(base_url=world.url) as browser:
        signin = browser.get("/signin")
        csrf = _CSRF.search(signin.text)
        assert csrf is not None
        check(post_form(browser, "/signin", {"csrf": csrf.group(1), "token": token + MARK}))
        check(browser.post("/signin", data={"csrf": csrf.group(1), "token": OPERATOR}))
        page = browser.get("/instances/new")
        csrf = _CSRF.search(page.text)
        assert csrf is not None
        form = {
            "csrf": csrf.group(1),
            "id": instance_id,
            "login": login,
            "server": server,
            "password": password,
            "confirmed": "1",
        }
        check(post_form(browser, "/instances", form))
        check(post_form(browser, "/instances/acc-1/credentials", {**form, "id": ""}))
        check(
            post_form(
                browser,
                "/instances/acc-1/confirm-closure",
                {"csrf": form["csrf"], "confirm": server},
            )
        )
        check(browser.get("/instances/" + raw_query(instance_id[:300])))
    nothing_leaked(world)

"""The console's session, CSRF tokens and headers, over a real uvicorn with httpx."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable

import httpx
import pytest

from mt5lifecycle import State
from mt5lifecycle.web import create_app

from .conftest import OPERATOR, TOKENS, VIEWER, World, serving

MakeWorld = Callable[..., World]
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(page: httpx.Response) -> str:
    found = _CSRF.search(page.text)
    assert found is not None, page.text[:500]
    return found.group(1)


def signed_in(url: str, token: str = OPERATOR) -> httpx.Client:
    """A browser-like client (cookies, no Authorization header), signed in."""
    client = httpx.Client(base_url=url, follow_redirects=False, timeout=5.0)
    form = client.get("/signin")
    response = client.post("/signin", data={"csrf": csrf_of(form), "token": token, "next": "/"})
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/"
    return client


def session_payload(client: httpx.Client) -> dict[str, object]:
    cookie = client.cookies["mt5lifecycle_session"]
    data = cookie.split(".")[0]
    return dict(json.loads(base64.b64decode(data + "=" * (-len(data) % 4))))


def test_pages_need_a_session_and_send_the_browser_to_sign_in(world: World) -> None:
    with httpx.Client(base_url=world.url) as anonymous:
        response = anonymous.get("/instances/acc-1?x=1")
        live = anonymous.get("/live")
    assert response.status_code == 303
    assert response.headers["location"] == "/signin?next=%2Finstances%2Facc-1%3Fx%3D1"
    assert live.status_code == 401 and live.json()["error"] == "unauthorized"


def test_the_session_cookie_is_signed_httponly_strict_and_holds_no_secret(world: World) -> None:
    client = signed_in(world.url)
    header = next(v for k, v in client.get("/signin").request.headers.items() if k == "cookie")
    assert "mt5lifecycle_session=" in header
    with httpx.Client(base_url=world.url) as fresh:
        form = fresh.get("/signin")
        response = fresh.post("/signin", data={"csrf": csrf_of(form), "token": OPERATOR})
    set_cookie = response.headers["set-cookie"].lower()
    assert "httponly" in set_cookie and "samesite=strict" in set_cookie and "path=/" in set_cookie
    assert "max-age=" in set_cookie
    payload = session_payload(client)
    assert payload["name"] == "alice"
    assert OPERATOR not in json.dumps(payload)
    assert set(payload) == {"name", "bind", "csrf", "until"}
    client.close()


def test_the_session_ends_at_its_time(make_world: MakeWorld) -> None:
    world = make_world(session_max_age=600)
    client = signed_in(world.url)
    assert client.get("/").status_code == 200
    world.clock.advance(599)
    assert client.get("/").status_code == 200
    world.clock.advance(2)
    assert client.get("/").status_code == 303
    client.close()


def test_a_session_ends_when_its_token_changes(world: World) -> None:
    key = "k" * 40
    app = create_app(world.backends, tokens=TOKENS, session_key=key)
    with serving(app) as url:
        client = signed_in(url)
        cookie = client.cookies["mt5lifecycle_session"]
        client.close()
    # The same key after a restart keeps the session, while the token is the same...
    same = create_app(world.backends, tokens=TOKENS, session_key=key)
    changed = create_app(world.backends, tokens={"alice": ("n" * 40, "operator")}, session_key=key)
    for app, expected in ((same, 200), (changed, 303)):
        with serving(app) as url, httpx.Client(base_url=url) as browser:
            browser.cookies.set("mt5lifecycle_session", cookie)
            assert browser.get("/").status_code == expected


def test_a_post_without_the_csrf_token_is_refused(world: World) -> None:
    world.account("acc-1")
    world.run(1)
    client = signed_in(world.url)
    for data in ({}, {"csrf": "forged"}, {"csrf": ""}):
        response = client.post("/instances/acc-1/disable", data=data)
        assert response.status_code == 403
        assert "expired or did not come from this console" in response.text
    assert world.backends.state.load("acc-1").snapshot.status is State.CONNECTED  # type: ignore[union-attr]
    page = client.get("/instances/acc-1")
    done = client.post("/instances/acc-1/disable", data={"csrf": csrf_of(page)})
    assert done.status_code == 303
    assert world.backends.state.load("acc-1").snapshot.status is State.INACTIVE  # type: ignore[union-attr]
    client.close()


def test_another_site_cannot_sign_a_browser_in(world: World) -> None:
    """Login CSRF: a form posted from elsewhere has no session, so no token to match."""
    with httpx.Client(base_url=world.url) as browser:
        response = browser.post("/signin", data={"token": OPERATOR, "csrf": "guess"})
    assert response.status_code == 403
    assert "mt5lifecycle_session" not in response.headers.get("set-cookie", "") or (
        "name" not in response.headers.get("set-cookie", "")
    )


def test_a_wrong_token_does_not_sign_in(world: World) -> None:
    with httpx.Client(base_url=world.url) as browser:
        form = browser.get("/signin")
        response = browser.post("/signin", data={"csrf": csrf_of(form), "token": OPERATOR + "x"})
        assert response.status_code == 401
        assert "That token is not valid." in response.text
        assert OPERATOR not in response.text
        assert browser.get("/").status_code == 303


@pytest.mark.parametrize(
    "target", ["//evil.example/", "https://evil.example/", "/\\evil.example", "javascript:alert(1)"]
)
def test_signing_in_never_sends_the_browser_to_another_site(world: World, target: str) -> None:
    with httpx.Client(base_url=world.url) as browser:
        form = browser.get("/signin", params={"next": target})
        assert target not in form.text
        response = browser.post(
            "/signin", data={"csrf": csrf_of(form), "token": OPERATOR, "next": target}
        )
    assert response.headers["location"] == "/"


def test_signing_out_ends_the_session(world: World) -> None:
    client = signed_in(world.url)
    page = client.get("/")
    assert client.post("/signout", data={"csrf": csrf_of(page)}).status_code == 303
    assert client.get("/").status_code == 303
    client.close()


def test_a_bearer_token_works_on_pages_without_a_csrf_token(world: World) -> None:
    world.account("acc-1")
    world.run(1)
    with world.client() as script:
        assert script.get("/").status_code == 200
        response = script.post("/instances/acc-1/disable", data={})
    assert response.status_code == 303
    assert world.backends.state.load("acc-1").snapshot.status is State.INACTIVE  # type: ignore[union-attr]


def test_pages_carry_the_security_headers(world: World) -> None:
    client = signed_in(world.url)
    for path in ("/", "/signin", "/instances/new"):
        response = client.get(path)
        headers = response.headers
        csp = headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "DENY"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["cache-control"] == "no-store"
        # No inline script or style for the policy to refuse.
        assert "<script>" not in response.text and " style=" not in response.text
        assert "onclick" not in response.text
    assert client.get("/static/console.js").headers["cache-control"] == "no-cache"
    client.close()


def test_a_viewer_gets_no_action_pages(world: World) -> None:
    world.account("acc-1")
    client = signed_in(world.url, VIEWER)
    assert client.get("/instances/new").status_code == 403
    assert client.get("/instances/acc-1/reset").status_code == 403
    page = client.get("/instances/acc-1")
    assert page.status_code == 200
    assert "data-dialog" not in page.text
    client.close()


def test_console_forms_refuse_bad_input_naming_the_field(world: World) -> None:
    client = signed_in(world.url)
    form = client.get("/instances/new")
    response = client.post(
        "/instances",
        data={
            "csrf": csrf_of(form),
            "id": "-bad",
            "login": "12ab",
            "server": "",
            "password": "kept-secret-pw",
            "confirmed": "1",
        },
    )
    assert response.status_code == 422
    text = response.text
    assert "the account number: digits only" in text
    assert "must not be empty" in text
    assert "expected 1 to 128 characters" in text
    assert "kept-secret-pw" not in text
    assert list(world.backends.state.ids()) == []
    client.close()


def test_an_unknown_page_is_404_and_an_unknown_instance_too(world: World) -> None:
    client = signed_in(world.url)
    assert client.get("/nothing/here").status_code == 404
    assert client.get("/instances/nobody").status_code == 404
    assert client.get("/instances/nobody/frobnicate").status_code == 404
    client.close()

"""The console in a real headless Chromium (Debian's, driven by Playwright).

A person signs in, finds the FAILED instances first, replaces credentials, resets one
and watches it turn CONNECTED without reloading (the test plays the fleet's time in
between), adds an account, and confirms a closure by typing the id; another watches
alerts get set aside while a channel is down and redelivers them. Screenshots of
the fleet page and an instance page, at a laptop's and a phone's size, are saved under
the test's temp dir and copied to ``/work/notes/screens/`` when that folder exists.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, ViewportSize, expect, sync_playwright

from mt5lifecycle import AlertKind, Reason, State

from .conftest import OPERATOR, PASSWORD, VIEWER, World
from .test_set_aside import QUICK, Channel, aside_kinds

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENS = Path("/work/notes/screens")
LAPTOP: ViewportSize = {"width": 1280, "height": 860}
PHONE: ViewportSize = {"width": 390, "height": 844}
WAIT = 5_000
"""Milliseconds a page gets to show what the test waits for (it polls every 0.3 s)."""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def fleet_world(make_world: Callable[..., World]) -> World:
    """A small fleet with one instance in each situation a person must handle."""
    world = make_world(poll_interval=0.3)
    for n in range(1, 9):
        world.account(f"bot-{n:02d}", login=5012300 + n)
    world.broker.fail_logins("acc-failed", Reason.AUTH_FAILED, times=5)
    world.account("acc-failed")
    assert world.fleet is not None
    world.fleet.add("acc-nocreds")  # no credentials stored: FAILED at once
    world.account("acc-closed")
    world.run(1)
    world.broker.open_position("acc-closed", 7001, "EURUSD", 1.0)
    world.broker.open_position("acc-closed", 7002, "XAUUSD", 0.5, close_retcode=10018)
    world.broker.pending_order("acc-closed", 8001, "GBPUSD")
    world.broker.close_account("acc-closed")
    world.broker.drop_connection("bot-03")
    world.run(200)
    states = {
        i: s.snapshot.status
        for i, s in world.backends.state.load_many(world.backends.state.ids()).items()
    }
    assert states["acc-failed"] is State.FAILED
    assert states["acc-nocreds"] is State.FAILED
    assert states["acc-closed"] is State.ACCOUNT_CLOSED
    return world


def sign_in(page: Page, world: World, token: str, path: str = "/") -> None:
    page.goto(world.url + path)
    expect(page).to_have_url(f"{world.url}/signin?next={path.replace('/', '%2F')}")
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(world.url + path)
    # The URL changes before the page's stylesheet is in: measure the page once it is.
    page.wait_for_load_state("load")


def shoot(page: Page, tmp_path: Path, name: str, *, full: bool = True) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=full)
    if SCREENS.parent.is_dir():
        SCREENS.mkdir(exist_ok=True)
        shutil.copy(path, SCREENS / path.name)
    return path


def no_secret(page: Page) -> None:
    assert PASSWORD not in page.content()
    assert OPERATOR not in page.content()


def test_an_operator_handles_a_failed_an_added_and_a_closed_account(
    browser: Browser, fleet_world: World, tmp_path: Path
) -> None:
    world = fleet_world
    context = browser.new_context(viewport=LAPTOP)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status == 404 else None)

    # Signed out, the console asks for a token first.
    sign_in(page, world, OPERATOR)
    expect(page.locator('[data-count="FAILED"]')).to_have_text("2")
    expect(page.locator('[data-count="ACCOUNT_CLOSED"]')).to_have_text("1")
    attention = page.locator("[data-attention] li")
    expect(attention).to_have_count(3)
    expect(attention.first).to_contain_text("acc-closed")
    expect(page.locator("[data-attention]")).to_contain_text("LOGIN_ATTEMPTS_EXHAUSTED")
    no_secret(page)
    shoot(page, tmp_path, "fleet-laptop")

    # The table filters in place as one types.
    page.get_by_label("Search").fill("acc-")
    expect(page.locator("[data-rows] tr")).to_have_count(3)
    page.get_by_label("Search").fill("")
    expect(page.locator("[data-rows] tr")).to_have_count(11)
    page.locator('[data-sort="attempts"]').click()
    expect(page.locator("[data-rows] tr").last).to_contain_text("acc-failed")

    # A FAILED instance: its page says what happened, the terminal's words included.
    page.locator("[data-attention]").get_by_role("link", name="acc-failed").click()
    expect(page).to_have_url(world.url + "/instances/acc-failed")
    expect(page.locator("h1")).to_have_text("acc-failed")
    failures = page.locator('[data-part="login_failures"] tbody tr')
    expect(failures).to_have_count(5)
    expect(failures.first).to_contain_text("Terminal: Authorization failed")
    expect(page.locator("[data-field=hint]")).to_contain_text("replace the credentials")
    shoot(page, tmp_path, "instance-laptop")

    # Replace the credentials (a dialog asks for confirmation), then reset.
    page.get_by_role("link", name="Replace credentials").click()
    dialog = page.locator("#dlg-credentials")
    expect(dialog).to_be_visible()
    dialog.get_by_label("Login (account number)").fill("5012399")
    dialog.get_by_label("Server").fill("Broker-Demo")
    dialog.get_by_label("Password").fill(PASSWORD + "-new")
    dialog.get_by_label("Replace the stored credentials of acc-failed").check()
    dialog.get_by_role("button", name="Replace credentials").click()
    expect(page.locator(".flash-ok")).to_contain_text("credentials of acc-failed were replaced")
    assert world.backends.credentials.get("acc-failed").login == 5012399  # type: ignore[union-attr]

    page.get_by_role("link", name="Reset").click()
    reset = page.locator("#dlg-reset")
    expect(reset).to_be_visible()
    shoot(page, tmp_path, "reset-dialog-laptop", full=False)
    reset.get_by_role("button", name="Reset acc-failed").click()
    expect(page.locator(".flash-ok")).to_contain_text("acc-failed was reset")
    status = page.locator(".facts [data-field=status]")
    expect(status).to_have_text("CONNECTING")
    expect(page.get_by_role("link", name="Reset")).to_be_hidden()

    # The fleet logs it in; the page follows without a reload.
    page.evaluate("window.__same_page = true")
    world.run(5)
    expect(status).to_have_text("CONNECTED", timeout=WAIT)
    expect(page.locator(".head [data-badge]")).to_have_text("CONNECTED", timeout=WAIT)
    assert page.evaluate("window.__same_page") is True
    expect(page.locator('[data-part="audits"] tbody tr')).to_have_count(2, timeout=WAIT)

    # Add an account.
    page.get_by_role("navigation").get_by_role("link", name="Add account").click()
    page.get_by_label("Instance id").fill("acc-new")
    page.get_by_label("Login (account number)").fill("5019999")
    page.get_by_label("Server").fill("Broker-Live")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_label("Store these credentials and start logging in now").check()
    page.get_by_role("button", name="Add and start").click()
    expect(page).to_have_url(world.url + "/instances/acc-new")
    expect(page.locator(".flash-ok")).to_contain_text("acc-new was added")
    world.run(1)
    expect(page.locator(".facts [data-field=status]")).to_have_text("CONNECTED", timeout=WAIT)
    no_secret(page)

    # A closed account: its page offers the closure and a new account.
    page.goto(world.url + "/")
    page.locator("[data-attention]").get_by_role("link", name="acc-closed").click()
    expect(page).to_have_url(world.url + "/instances/acc-closed/closed")
    outcomes = page.locator('[data-part="trade_outcomes"] tbody tr')
    expect(outcomes).to_have_count(3)
    expect(page.locator('[data-part="trade_outcomes"]')).to_contain_text("10018")
    confirm = page.get_by_role("button", name="Confirm closure")
    expect(confirm).to_be_disabled()
    page.get_by_label("Type acc-closed to confirm").fill("acc-close")
    expect(confirm).to_be_disabled()
    page.get_by_label("Type acc-closed to confirm").fill("acc-closed")
    expect(confirm).to_be_enabled()
    confirm.click()
    expect(page.locator(".flash-ok")).to_contain_text("Closure of acc-closed confirmed")
    expect(page.locator(".notice h2")).to_have_text("Closure confirmed")
    assert world.backends.credentials.get("acc-closed") is None
    assert world.backends.state.load("acc-closed") is None
    page.get_by_role("link", name="Add a new account").click()
    expect(page).to_have_url(world.url + "/instances/new?replaces=acc-closed")
    expect(page.locator(".callout")).to_contain_text("replaces acc-closed")

    actions = [(a.actor, a.action, a.outcome) for a in world.archive.audits]
    assert actions == [
        ("alice", "put_credentials", "done"),
        ("alice", "reset", "done"),
        ("alice", "add", "done"),
        ("alice", "confirm_closure", "done"),
    ]
    assert PASSWORD not in world.everything_archived()
    assert errors == []
    context.close()


def test_a_viewer_sees_no_action_and_is_refused_one(browser: Browser, fleet_world: World) -> None:
    world = fleet_world
    context = browser.new_context(viewport=LAPTOP)
    page = context.new_page()
    sign_in(page, world, VIEWER, "/instances/acc-failed")
    expect(page.locator(".role")).to_have_text("viewer")
    expect(page.locator("[data-actions]")).to_have_count(0)
    expect(page.locator("dialog")).to_have_count(0)
    expect(page.get_by_role("link", name="Add account")).to_have_count(0)
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    refused = page.request.post(
        world.url + "/instances/acc-failed/reset", form={"csrf": str(csrf)}, max_redirects=0
    )
    assert refused.status == 403
    page.goto(world.url + "/instances/acc-failed/reset")
    expect(page.locator("h1")).to_have_text("Not allowed")
    assert [(a.actor, a.outcome) for a in world.archive.audits] == [("bob", "refused")]
    assert world.backends.state.load("acc-failed").snapshot.status is State.FAILED  # type: ignore[union-attr]
    context.close()


def test_the_console_fits_a_phone(browser: Browser, fleet_world: World, tmp_path: Path) -> None:
    context = browser.new_context(
        viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=1
    )
    page = context.new_page()
    sign_in(page, fleet_world, OPERATOR)
    width = page.evaluate("document.documentElement.scrollWidth")
    shoot(page, tmp_path, "fleet-phone")
    assert width <= PHONE["width"], f"the fleet page scrolls sideways ({width} px)"
    shoot(page, tmp_path, "fleet-phone-first-screen", full=False)
    page.goto(fleet_world.url + "/instances/acc-failed")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the instance page scrolls sideways ({width} px)"
    shoot(page, tmp_path, "instance-phone")
    shoot(page, tmp_path, "instance-phone-first-screen", full=False)
    page.goto(fleet_world.url + "/instances/acc-closed/closed")
    shoot(page, tmp_path, "closed-phone")
    context.close()


def test_an_operator_sees_alerts_set_aside_live_and_redelivers_them(
    browser: Browser, make_world: Callable[..., World], tmp_path: Path
) -> None:
    channel = Channel()
    world = make_world(poll_interval=0.3, notifier=channel, fleet_policy=QUICK)
    world.account("acc-ok")
    world.run(1)
    context = browser.new_context(viewport=LAPTOP)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    sign_in(page, world, OPERATOR)
    section = page.locator("[data-set-aside-section]")
    expect(section.locator("[data-empty]")).to_be_visible()

    # The channel is down while acc-1's password is refused: its alerts are set aside,
    # and the page shows them (and the fleet's health) without a reload.
    world.broker.fail_logins("acc-1", Reason.AUTH_FAILED)
    world.account("acc-1")
    world.run(300)
    rows = section.locator("[data-set-aside] tbody tr")
    expect(rows).to_have_count(2, timeout=WAIT)
    expect(section.locator("[data-set-aside-total]")).to_have_text("2")
    expect(rows.first).to_contain_text("LOGIN_FAILURE")
    expect(rows.first).to_contain_text("https://... failed")
    expect(page.locator("[data-healthy]")).to_have_text("1", timeout=WAIT)
    expect(page.locator("[data-health-instances]")).to_have_text("2")
    assert "hook-secret" not in page.content()
    shoot(page, tmp_path, "set-aside-fleet-laptop")
    page.set_viewport_size(PHONE)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the set-aside list scrolls sideways ({width} px)"
    shoot(page, tmp_path, "set-aside-fleet-phone")
    page.set_viewport_size(LAPTOP)

    # The newest one, from its row: the confirmation ticks it alone.
    channel.down = False
    rows.first.get_by_role("link", name="Redeliver").click()
    expect(page.locator("h2")).to_have_text("Redeliver the notifications of acc-1?")
    boxes = page.locator("input[name=nid]")
    expect(boxes).to_have_count(2)
    expect(boxes.nth(0)).to_be_checked()  # newest first, as on the fleet page
    expect(boxes.nth(1)).not_to_be_checked()
    page.get_by_role("button", name="Redeliver").click()
    expect(page).to_have_url(world.url + "/instances/acc-1")
    expect(page.locator(".flash-ok")).to_contain_text("1 notification(s) of acc-1 put back")
    assert channel.kinds("acc-1") == [AlertKind.LOGIN_FAILURE]

    # The instance's page: its health, and the rest through the dialog.
    expect(page.locator('[data-health="healthy"]')).to_have_text("no")
    expect(page.locator('[data-health="reason"]')).to_have_text("LOGIN_ATTEMPTS_EXHAUSTED")
    expect(page.locator("[data-set-aside] tbody tr")).to_have_count(1)
    shoot(page, tmp_path, "set-aside-instance-laptop")
    page.locator("[data-set-aside-section]").get_by_role("link", name="Redeliver").click()
    dialog = page.locator("#dlg-redeliver")
    expect(dialog).to_be_visible()
    dialog.get_by_role("button", name="Redeliver").click()
    expect(page.locator(".flash-ok")).to_contain_text("1 notification(s) of acc-1 put back")
    expect(page.locator("[data-set-aside-section] [data-empty]")).to_be_visible()
    expect(page.locator("[data-set-aside-section] [data-redeliver]")).to_be_hidden()
    assert channel.kinds("acc-1") == [AlertKind.LOGIN_FAILURE, AlertKind.REPEATED_LOGIN_FAILURE]
    assert aside_kinds(world) == []
    assert [(a.action, a.outcome) for a in world.archive.audits] == [
        ("redeliver", "done"),
        ("redeliver", "done"),
    ]
    assert errors == []
    context.close()

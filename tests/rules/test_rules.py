"""The shipped alert rules: valid, one per AlertKind, and firing and resolving with
the library's own flows, checked by ``promtool test rules``.

Nothing in the promtool test is typed by hand: each flow drives a real ``Lifecycle``
on ``memory_backends`` and a ``FakeClock``, with a ``PrometheusMetrics`` on a private
registry, and the registry is scraped every ``SCRAPE`` seconds of simulated time, as
Prometheus would. The samples become promtool ``input_series`` (a series that
disappears gets the staleness marker Prometheus writes when a target stops exposing
it). The expected alerts come from the notifications the library sent during the
same flow: each ``AlertKind`` notified at time t must make its rule fire at the first
scrape at or after t, and

* per instance, a state-like rule resolves at the first scrape after the instance
  logged in again (``LOGIN_RECOVERED``) or an operator acted on it (reset, closure
  confirmed); event-like ones (``LOGIN_RECOVERED``, ``CREDENTIALS_DELETED``) last
  their window;
* without per-instance series, every rule lasts its window (``WINDOWS``).

Every rule is checked at every checkpoint, so a rule that fires when nothing was
notified fails too. Each flow runs twice, as two targets scraped side by side: one
with per-instance series and one without, which also shows that a rule never fires
twice for one target.

To look at the promtool test file the tests run:

    python tests/rules/test_rules.py [OUT] [--rules PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import attrs
import pytest
from prometheus_client import CollectorRegistry

from mt5lifecycle import AlertKind, Credentials, Lifecycle, Reason, State
from mt5lifecycle.adapters.prometheus import PrometheusMetrics
from mt5lifecycle.testing import FakeBroker, FakeClock, RecordingNotifier, memory_backends, run_for

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "mt5lifecycle" / "rules" / "alerts.yml"

SCRAPE = 15
"""Seconds between scrapes (and rule evaluations) of simulated time."""
JOB = "mt5lifecycle"
INSTANCE_ID = "acc-1"
PASSWORD = "s3cret-never-a-label"

RULE_OF = {
    AlertKind.LOGIN_FAILURE: "MT5LoginFailure",
    AlertKind.REPEATED_LOGIN_FAILURE: "MT5RepeatedLoginFailure",
    AlertKind.LOGIN_RECOVERED: "MT5LoginRecovered",
    AlertKind.ACCOUNT_BANNED: "MT5AccountBanned",
    AlertKind.ACCOUNT_CLOSED: "MT5AccountClosed",
    AlertKind.AUTO_RECOVERY_FAILURE: "MT5AutoRecoveryFailure",
    AlertKind.CREDENTIALS_DELETED: "MT5CredentialsDeleted",
}
SEVERITY = {
    AlertKind.LOGIN_FAILURE: "critical",
    AlertKind.REPEATED_LOGIN_FAILURE: "warning",
    AlertKind.LOGIN_RECOVERED: "info",
    AlertKind.ACCOUNT_BANNED: "critical",
    AlertKind.ACCOUNT_CLOSED: "critical",
    AlertKind.AUTO_RECOVERY_FAILURE: "critical",
    AlertKind.CREDENTIALS_DELETED: "info",
}
WINDOWS = {
    AlertKind.LOGIN_FAILURE: 3600,
    AlertKind.REPEATED_LOGIN_FAILURE: 900,
    AlertKind.LOGIN_RECOVERED: 900,
    AlertKind.ACCOUNT_BANNED: 3600,
    AlertKind.ACCOUNT_CLOSED: 3600,
    AlertKind.AUTO_RECOVERY_FAILURE: 3600,
    AlertKind.CREDENTIALS_DELETED: 900,
}
"""How long a rule fires after its event when it follows a fleet counter."""
EVENTS = frozenset({AlertKind.LOGIN_RECOVERED, AlertKind.CREDENTIALS_DELETED})
"""Rules that follow a fleet counter in both modes."""
STATE_OF = {
    AlertKind.LOGIN_FAILURE: "FAILED",
    AlertKind.ACCOUNT_BANNED: "INACTIVE",
    AlertKind.ACCOUNT_CLOSED: "ACCOUNT_CLOSED",
    AlertKind.AUTO_RECOVERY_FAILURE: "FAILED",
}
"""Per instance, the rule follows ``mt5lifecycle_instance_state`` in this state."""


# --- playing a flow ---------------------------------------------------------------

SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass
class Played:
    """One flow on one target: what was scraped and what was notified."""

    flow: str
    per_instance: bool
    scrapes: list[dict[SeriesKey, float]] = field(default_factory=list)
    notified: list[tuple[AlertKind, float, Reason | None]] = field(default_factory=list)
    actions: list[float] = field(default_factory=list)
    """When an operator acted (reset, confirm_closure), in seconds from the start."""


class Sim:
    """A ``Lifecycle`` on the real library, scraped every ``SCRAPE`` simulated seconds."""

    def __init__(self, flow: str, per_instance: bool) -> None:
        self.registry = CollectorRegistry()
        base = memory_backends()
        assert isinstance(base.clock, FakeClock)
        assert isinstance(base.broker, FakeBroker)
        assert isinstance(base.notifier, RecordingNotifier)
        self.clock: FakeClock = base.clock
        self.broker: FakeBroker = base.broker
        self.notifier: RecordingNotifier = base.notifier
        self.backends = attrs.evolve(
            base, metrics=PrometheusMetrics(self.registry, per_instance=per_instance)
        )
        self.lifecycle = Lifecycle(INSTANCE_ID, self.backends)
        self.t0 = self.clock.now()
        self.played = Played(flow, per_instance)
        self._scrape()

    def put_credentials(self) -> None:
        self.backends.credentials.put(INSTANCE_ID, Credentials(12345, "Demo-Server", PASSWORD))

    def until(self, offset: float) -> None:
        """Run the lifecycle up to ``offset`` seconds from the start, scraping on the way.

        What falls due at a scrape's instant is done before that scrape.
        """
        end = self.t0 + offset
        while True:
            next_scrape = self.t0 + len(self.played.scrapes) * SCRAPE
            if next_scrape > end:
                break
            run_for(self.lifecycle, self.clock, next_scrape - self.clock.now())
            self._scrape()
        run_for(self.lifecycle, self.clock, end - self.clock.now())

    def operator(self, action: Callable[[], object]) -> None:
        self.played.actions.append(self.clock.now() - self.t0)
        action()

    def finish(self) -> Played:
        for n in self.notifier.notifications:
            assert n.instance_id == INSTANCE_ID
            self.played.notified.append((n.kind, n.at.timestamp() - self.t0, n.reason))
        return self.played

    def _scrape(self) -> None:
        scrape: dict[SeriesKey, float] = {}
        for family in self.registry.collect():
            for sample in family.samples:
                # prometheus-client's *_created series say when a counter was born;
                # no rule reads them.
                if sample.name.endswith("_created"):
                    continue
                scrape[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        self.played.scrapes.append(scrape)


# Actions happen 7 s past a scrape, so that "the first scrape at or after" is never
# ambiguous; due times (backoffs, restarts) fall where the policy puts them.
OFF = 7


def auth_exhaustion(sim: Sim) -> None:
    """Five wrong passwords: REPEATED at the 3rd, LOGIN_FAILURE at the 5th; reset, success."""
    sim.put_credentials()
    sim.broker.fail_logins(INSTANCE_ID, Reason.AUTH_FAILED, times=5)
    sim.until(60 + OFF)
    sim.lifecycle.start()
    sim.until(10 * 60 + OFF)
    sim.operator(sim.lifecycle.reset)
    sim.until(100 * 60)


def three_failures_then_success(sim: Sim) -> None:
    """Three wrong passwords then a success: REPEATED, then LOGIN_RECOVERED."""
    sim.put_credentials()
    sim.broker.fail_logins(INSTANCE_ID, Reason.AUTH_FAILED, times=3)
    sim.until(60 + OFF)
    sim.lifecycle.start()
    sim.until(40 * 60)


def ban_then_lift(sim: Sim) -> None:
    """The broker bans a connected account; later lifts the ban and an operator resets."""
    sim.put_credentials()
    sim.until(60 + OFF)
    sim.lifecycle.start()
    sim.until(5 * 60 + OFF)
    sim.broker.ban_account(INSTANCE_ID)
    sim.lifecycle.account_banned()
    sim.until(20 * 60 + OFF)
    sim.broker.lift_ban(INSTANCE_ID)
    sim.operator(sim.lifecycle.reset)
    sim.until(100 * 60)


def closure_confirmed(sim: Sim) -> None:
    """The broker closes an account with a position open; an operator confirms."""
    sim.put_credentials()
    sim.broker.open_position(INSTANCE_ID, 1001, "EURUSD", 0.1)
    sim.until(60 + OFF)
    sim.lifecycle.start()
    sim.until(5 * 60 + OFF)
    sim.broker.close_account(INSTANCE_ID)
    sim.lifecycle.account_closed()
    sim.until(15 * 60 + OFF)
    sim.operator(sim.lifecycle.confirm_closure)
    sim.until(100 * 60)


def crash_until_recovery_exhausted(sim: Sim) -> None:
    """The terminal crashes and no restart brings it back; fixed, an operator resets."""
    sim.put_credentials()
    sim.until(60 + OFF)
    sim.lifecycle.start()
    sim.until(3 * 60 + OFF)
    sim.broker.fail_restarts(INSTANCE_ID, None)
    sim.broker.crash_terminal(INSTANCE_ID)
    sim.lifecycle.terminal_failed()
    sim.until(20 * 60 + OFF)
    sim.broker.fail_restarts(INSTANCE_ID, 0)
    sim.operator(sim.lifecycle.reset)
    sim.until(100 * 60)


def credentials_missing(sim: Sim) -> None:
    """Started with no credentials stored; they are added and an operator resets."""
    sim.until(60 + OFF)
    sim.lifecycle.start()
    sim.until(10 * 60 + OFF)
    sim.put_credentials()
    sim.operator(sim.lifecycle.reset)
    sim.until(100 * 60)


FLOWS: dict[str, Callable[[Sim], None]] = {
    f.__name__: f
    for f in (
        auth_exhaustion,
        three_failures_then_success,
        ban_then_lift,
        closure_confirmed,
        crash_until_recovery_exhausted,
        credentials_missing,
    )
}


def play(flow: str, per_instance: bool) -> Played:
    sim = Sim(flow, per_instance)
    FLOWS[flow](sim)
    return sim.finish()


# --- from samples to promtool input_series ----------------------------------------


def series_name(key: SeriesKey, target: str) -> str:
    name, labels = key
    pairs = sorted([*labels, ("instance", target), ("job", JOB)])
    return name + "{" + ",".join(f"{k}={json.dumps(v)}" for k, v in pairs) + "}"


def number(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)


def encode(values: Sequence[float | None]) -> str:
    """promtool's notation: ``vxN`` is N+1 samples of v, ``_xN`` is N missing ones,
    ``stale`` the marker Prometheus writes when a series leaves a scrape."""
    tokens: list[str] = []
    seen = False
    for value in values:
        if value is None:
            tokens.append("stale" if seen else "_")
            seen = False
        else:
            tokens.append(number(value))
            seen = True
    out: list[str] = []
    i = 0
    while i < len(tokens):
        j = i
        while j < len(tokens) and tokens[j] == tokens[i]:
            j += 1
        run = j - i
        token = tokens[i]
        if token == "stale" or run == 1:
            out.extend([token] * run)
        elif token == "_":
            out.append(f"_x{run}")
        else:
            out.append(f"{token}x{run - 1}")
        i = j
    return " ".join(out)


def input_series(played: Played, target: str) -> dict[str, str]:
    keys = sorted({key for scrape in played.scrapes for key in scrape})
    return {
        series_name(key, target): encode([scrape.get(key) for scrape in played.scrapes])
        for key in keys
    }


# --- the expected alerts ----------------------------------------------------------

Labels = dict[str, str]


@dataclass(frozen=True)
class Firing:
    """A rule expected to fire from ``start`` (inclusive) to ``end`` (exclusive)."""

    rule: str
    labels: tuple[tuple[str, str], ...]
    start: int
    end: float
    fuzzy: tuple[float, float] | None = None
    """Instants where a Prometheus version may still differ (a range's edge)."""


def first_scrape(at: float) -> int:
    return math.ceil(at / SCRAPE - 1e-9) * SCRAPE


def expected(played: Played, target: str) -> list[Firing]:
    out: list[Firing] = []
    for kind, at, reason in played.notified:
        start = first_scrape(at)
        labels: Labels = {
            "severity": SEVERITY[kind],
            "kind": kind.value,
            "job": JOB,
            "instance": target,
        }
        if played.per_instance and kind not in EVENTS:
            labels["instance_id"] = INSTANCE_ID
            if kind in STATE_OF:
                labels["state"] = STATE_OF[kind]
                labels["reason"] = "" if reason is None else reason.value
            ends = [a for a in played.actions if a > at]
            ends += [t for k, t, _ in played.notified if k is AlertKind.LOGIN_RECOVERED and t > at]
            end: float = first_scrape(min(ends)) if ends else math.inf
            fuzzy = None
        else:
            window = WINDOWS[kind]
            end = start + window
            # Prometheus 2 ranges include their left edge, Prometheus 3 does not.
            fuzzy = (start + window - 2 * SCRAPE, start + window)
        pairs = tuple(sorted((k, v) for k, v in labels.items() if v))
        out.append(Firing(RULE_OF[kind], pairs, start, end, fuzzy))
    return out


def summary(rule: str, labels: Labels) -> str:
    iid = labels.get("instance_id")
    who = f"MT5 instance {iid}" if iid else f"An MT5 instance behind {labels['instance']}"
    if rule == "MT5LoginFailure":
        return f"{who} gave up logging in" + (f" ({labels['reason']})" if iid else "")
    if rule == "MT5RepeatedLoginFailure":
        return f"{who} keeps failing to log in"
    if rule == "MT5LoginRecovered":
        return f"MT5 instances behind {labels['instance']} logged in again after failing"
    if rule == "MT5AccountBanned":
        return f"{who} was banned by the broker"
    if rule == "MT5AccountClosed":
        return f"{who}: the broker closed its account"
    if rule == "MT5AutoRecoveryFailure":
        return f"{who}: automatic restarts ran out"
    if rule == "MT5CredentialsDeleted":
        return f"MT5 credentials deleted behind {labels['instance']} after a confirmed closure"
    raise AssertionError(rule)


def constant_annotations(rules_text: str) -> dict[str, dict[str, str]]:
    """Each rule's description and runbook_url: fixed strings, read from the rules."""
    out: dict[str, dict[str, str]] = {}
    for block in re.split(r"\n\s*- alert: ", rules_text)[1:]:
        name = block.split("\n", 1)[0].strip()
        description = re.search(r'\n\s*description: "([^"\\]*)"\n', block)
        runbook = re.search(r"\n\s*runbook_url: (\S+)", block)
        assert description and runbook, f"{name}: description or runbook_url not found"
        out[name] = {"description": description[1], "runbook_url": runbook[1]}
    return out


def checkpoints(firings: Iterable[Firing], last: int) -> list[int]:
    points = set(range(0, last + 1, 10 * 60)) | {last}
    for f in firings:
        edges = [f.start - SCRAPE, f.start, f.start + SCRAPE]
        if f.end != math.inf:
            end = int(f.end)
            if f.fuzzy is None:
                edges += [end - SCRAPE, end, end + SCRAPE]
            else:
                edges += [int(f.fuzzy[0]), end, end + SCRAPE]
        points.update(t for t in edges if 0 <= t <= last)
    return sorted(points)


def alert_tests(
    firings: Sequence[Firing], last: int, annotations: dict[str, dict[str, str]]
) -> list[dict[str, object]]:
    tests: list[dict[str, object]] = []
    for t in checkpoints(firings, last):
        for rule in RULE_OF.values():
            mine = [f for f in firings if f.rule == rule]
            if any(f.fuzzy and f.fuzzy[0] < t < f.fuzzy[1] for f in mine):
                continue
            firing = sorted({f.labels for f in mine if f.start <= t < f.end})
            if not mine and t % 600 and t != last:
                continue
            tests.append(
                {
                    "eval_time": f"{t}s",
                    "alertname": rule,
                    "exp_alerts": [
                        {
                            "exp_labels": dict(labels),
                            "exp_annotations": {
                                "summary": summary(rule, dict(labels)),
                                **annotations[rule],
                            },
                        }
                        for labels in firing
                    ],
                }
            )
    return tests


# --- the test file ----------------------------------------------------------------


PER_INSTANCE_TARGET = "bot-1:9464"
FLEET_TARGET = "bot-2:9464"


def groups() -> list[tuple[str, list[tuple[Played, str]]]]:
    """Each flow on two targets scraped side by side: one exports per-instance series,
    the other does not, so every group checks both modes and that a rule never fires
    twice for one target."""
    return [
        (
            f"{flow}: {PER_INSTANCE_TARGET} per_instance=True, {FLEET_TARGET} per_instance=False",
            [
                (play(flow, per_instance=True), PER_INSTANCE_TARGET),
                (play(flow, per_instance=False), FLEET_TARGET),
            ],
        )
        for flow in FLOWS
    ]


def build(rules: Path = RULES, rule_file: str | None = None) -> dict[str, object]:
    annotations = constant_annotations(rules.read_text(encoding="utf-8"))
    tests = []
    for name, targets in groups():
        series: dict[str, str] = {}
        firings: list[Firing] = []
        last = 0
        for played, target in targets:
            series.update(input_series(played, target))
            firings += expected(played, target)
            last = max(last, (len(played.scrapes) - 1) * SCRAPE)
        tests.append(
            {
                "name": name,
                "interval": f"{SCRAPE}s",
                "input_series": [{"series": s, "values": v} for s, v in sorted(series.items())],
                "alert_rule_test": alert_tests(firings, last, annotations),
            }
        )
    return {
        "rule_files": [rule_file or str(rules)],
        "evaluation_interval": f"{SCRAPE}s",
        "tests": tests,
    }


def to_yaml(value: object, indent: int = 0) -> str:
    """Block YAML for the promtool file; scalars are JSON strings, which YAML reads."""
    pad = " " * indent
    if isinstance(value, dict):
        if not value:
            return "{}"
        lines = []
        for k, v in value.items():
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{pad}{json.dumps(k)}:\n{to_yaml(v, indent + 2)}")
            else:
                lines.append(f"{pad}{json.dumps(k)}: {to_yaml(v)}")
        return "\n".join(lines)
    if isinstance(value, list):
        if not value:
            return "[]"
        lines = []
        for item in value:
            text = to_yaml(item, indent + 2)
            lines.append(f"{pad}- {text.lstrip()}")
        return "\n".join(lines)
    return json.dumps(value)


HEADER = """\
# promtool unit tests of mt5lifecycle/rules/alerts.yml, generated by
# tests/rules/test_rules.py from flows played on the real library. Do not edit.
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", type=Path, help="where to write (default: stdout)")
    parser.add_argument("--rules", type=Path, default=RULES, help="the rules file")
    args = parser.parse_args(argv)
    # The flows fail logins on purpose; their WARNING lines are not news here.
    logging.basicConfig(level=logging.ERROR)
    text = HEADER + to_yaml(build(args.rules.resolve())) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text, encoding="utf-8")
    return 0


# --- the tests ------------------------------------------------------------------

RUNBOOKS = ROOT / "docs" / "operations" / "alerts.md"
DASHBOARD = ROOT / "docs" / "grafana" / "fleet-dashboard.json"
INSTALL = "apt-get install -y --no-install-recommends prometheus"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"promtool is not installed; CI must install it ({INSTALL})")
        pytest.skip(f"promtool is not installed ({INSTALL}); CI runs these tests")
    return path


@pytest.fixture(scope="module")
def built() -> dict[str, object]:
    return build(RULES)


@pytest.fixture(scope="module")
def promtool_file(built: dict[str, object], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("promtool") / "alerts_test.yml"
    path.write_text(HEADER + to_yaml(built) + "\n", encoding="utf-8")
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def rules_text() -> str:
    return RULES.read_text(encoding="utf-8")


def test_the_rules_file_ships_with_the_package() -> None:
    shipped = files("mt5lifecycle").joinpath("rules/alerts.yml").read_text(encoding="utf-8")
    assert shipped == rules_text()


def test_promtool_accepts_the_rules(promtool: str) -> None:
    result = run(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout


def test_there_is_one_rule_per_alert_kind() -> None:
    names = re.findall(r"^\s*- alert: (\w+)$", rules_text(), re.M)
    kinds = re.findall(r"^\s*kind: (\w+)$", rules_text(), re.M)
    assert sorted(kinds) == sorted(k.value for k in AlertKind)
    expected_names = {k.value: rule for k, rule in RULE_OF.items()}
    assert dict(zip(kinds, names, strict=True)) == expected_names
    severities = re.findall(r"^\s*severity: (\w+)$", rules_text(), re.M)
    expected_severities = {k.value: s for k, s in SEVERITY.items()}
    assert dict(zip(kinds, severities, strict=True)) == expected_severities


def test_every_runbook_url_points_at_a_runbook_section() -> None:
    headings = re.findall(r"^## (\w+)$", RUNBOOKS.read_text(encoding="utf-8"), re.M)
    anchors = {h.lower() for h in headings}
    urls = re.findall(r"runbook_url: docs/operations/alerts\.md#(\S+)$", rules_text(), re.M)
    assert len(urls) == len(AlertKind)
    assert set(urls) <= anchors
    assert set(RULE_OF.values()) <= set(headings)


def test_the_flows_show_every_rule_firing_and_resolving_in_both_modes(
    built: dict[str, object],
) -> None:
    seen: set[tuple[str, str, str]] = set()
    tests = built["tests"]
    assert isinstance(tests, list)
    for group in tests:
        fired: set[tuple[str, str]] = set()
        for check in group["alert_rule_test"]:
            rule = check["alertname"]
            firing = {a["exp_labels"]["instance"] for a in check["exp_alerts"]}
            for target in (PER_INSTANCE_TARGET, FLEET_TARGET):
                if target in firing:
                    fired.add((rule, target))
                    seen.add((rule, target, "fires"))
                elif (rule, target) in fired:
                    seen.add((rule, target, "resolves"))
    for rule in RULE_OF.values():
        for target in (PER_INSTANCE_TARGET, FLEET_TARGET):
            assert (rule, target, "fires") in seen, f"{rule} never fires on {target}"
            assert (rule, target, "resolves") in seen, f"{rule} never resolves on {target}"


def test_the_input_series_never_hold_a_password(promtool_file: Path) -> None:
    text = promtool_file.read_text(encoding="utf-8")
    assert PASSWORD not in text
    assert "mt5lifecycle_instance_state" in text


def test_the_rules_fire_and_resolve_as_the_library_notifies(
    promtool: str, promtool_file: Path
) -> None:
    result = run(promtool, "test", "rules", str(promtool_file))
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]


def exported_series() -> set[str]:
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry)
    metrics.transition("acc-1", None, State.CONNECTING, None)
    metrics.login("acc-1", None, 0)
    metrics.restart("acc-1", 1)
    metrics.error("archive", "acc-1")
    return {
        sample.name
        for family in registry.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_the_rules_and_the_dashboard_read_only_series_the_adapter_exports() -> None:
    exported = exported_series()
    for text in (rules_text(), *dashboard_queries()):
        used = set(re.findall(r"mt5lifecycle_[a-z_]+", text))
        assert used <= exported, used - exported


def test_the_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    rules = [
        {
            "record": f"dashboard_query_{i}",
            "expr": re.sub(r"\$__(rate_)?interval", "1m", expr).replace("$job", ".*"),
        }
        for i, expr in enumerate(dashboard_queries())
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(to_yaml({"groups": [{"name": "dashboard", "rules": rules}]}) + "\n")
    result = run(promtool, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


if __name__ == "__main__":
    sys.exit(main())

"""Running shell blocks: ``sh``/``bash`` as scripts, ``console`` as typed commands.

A ``console`` block is a session: each ``$ `` line is a command (a trailing ``\\``
continues it on the next line), and the lines up to the next ``$ `` are what it
prints, stdout and stderr together. The output is compared with doctest's checker
and ``ELLIPSIS``: a line ``...`` in the page stands for lines cut from the sample.
A command whose answers are prompted for (a password, a confirmation) runs on a
pseudo-terminal, as at a console, and gets the answers its block's setup gave.
"""

from __future__ import annotations

import doctest
import os
import re
import select
import shlex
import subprocess
import sys
from collections.abc import Mapping

TIMEOUT = 120.0
"""Seconds one command may take before the test gives up on it (never waited out
by a passing test)."""

_CHECKER = doctest.OutputChecker()


def run_script(script: str) -> subprocess.CompletedProcess[str]:
    """An ``sh`` block: one bash script that stops at the first failing command."""
    return subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=TIMEOUT,
        check=False,
    )


def check_syntax(script: str) -> subprocess.CompletedProcess[str]:
    """A fragment: parsed by bash (``-n``), never run."""
    return subprocess.run(["bash", "-n", "-c", script], capture_output=True, text=True, check=False)


def session(content: str) -> list[tuple[str, str]]:
    """The ``(command, expected output)`` pairs of a ``console`` block."""
    pairs: list[tuple[str, list[str]]] = []
    lines = content.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("$ "):
            command = line[2:]
            while command.endswith("\\") and i + 1 < len(lines):
                i += 1
                command = command[:-1] + "\n" + lines[i]
            pairs.append((command, []))
        elif pairs:
            pairs[-1][1].append(line)
        else:
            raise AssertionError(f"a console block starts with a command ($ ...), not {line!r}")
        i += 1
    return [(command, "".join(f"{o}\n" for o in out)) for command, out in pairs]


def _normalise(text: str) -> str:
    text = text.replace("\r\n", "\n")
    return re.sub(r"[ \t]+$", "", text, flags=re.M)


def run_command(command: str, answers: Mapping[str, str] | None = None) -> str:
    """What ``command`` prints (stdout and stderr together)."""
    if not answers:
        done = subprocess.run(
            ["bash", "-o", "pipefail", "-c", command],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        return _normalise(done.stdout)
    return _normalise(_on_a_terminal(command, answers))


def _on_a_terminal(command: str, answers: Mapping[str, str]) -> str:
    """Run ``command`` on a pseudo-terminal; answer each prompt as it is shown.

    util-linux's ``script`` makes the terminal (the command's controlling one, so
    ``getpass`` turns its echo off as at a console); no fork of this process.
    """
    if sys.platform == "win32":
        raise NotImplementedError("a pseudo-terminal is POSIX: the docs' shell blocks are")
    shell = shlex.join(["bash", "-o", "pipefail", "-c", command])
    child = subprocess.Popen(
        ["script", "--quiet", "--return", "--flush", "--command", shell, "/dev/null"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert child.stdin is not None and child.stdout is not None
    seen = b""
    answered = dict.fromkeys(answers, 0)
    try:
        while True:
            ready, _, _ = select.select([child.stdout], [], [], TIMEOUT)
            if not ready:
                raise AssertionError(f"{command!r} printed nothing for {TIMEOUT} s: {seen!r}")
            chunk = os.read(child.stdout.fileno(), 4096)
            if not chunk:
                break
            seen += chunk
            text = seen.decode(errors="replace")
            for prompt, answer in answers.items():
                if text.endswith(prompt) and text.count(prompt) > answered[prompt]:
                    child.stdin.write(answer.encode() + b"\n")
                    child.stdin.flush()
                    answered[prompt] += 1
                    break
    finally:
        child.stdin.close()
        child.stdout.close()
        child.wait(TIMEOUT)
    return seen.decode(errors="replace")


def compare(command: str, want: str, got: str) -> None:
    if not _CHECKER.check_output(_normalise(want), got, doctest.ELLIPSIS):
        raise AssertionError(
            f"$ {command}\n--- the page shows ---\n{want}--- the command printed ---\n{got}"
        )

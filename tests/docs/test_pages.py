"""Every page of README.md and docs/ runs, top to bottom, as a reader would type it.

One test per page. Its blocks run in the page's order in one session: the Python
blocks share one namespace (a later block uses what an earlier one built), the shell
blocks run in bash in the same working directory and environment (see
tests/docs/__init__.py for the convention, and tests/docs/conftest.py for the world:
the real Redis and PostgreSQL under names of this test's own, removed afterwards).
"""

from __future__ import annotations

import ast
import doctest
import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pytest_examples import CodeExample, EvalExample, find_examples

from mt5lifecycle.adapters.prometheus import PrometheusMetrics

from . import worlds
from ._pages import PAGES, POSIX, Block, blocks, page_id, unconverted
from ._shell import TIMEOUT, check_syntax, compare, run_command, run_script, session

RUNNABLE = [
    pytest.param(
        p,
        id=page_id(p),
        marks=[pytest.mark.xfail(reason=why, run=False)] if (why := unconverted(p)) else [],
    )
    for p in PAGES
    if any(b.lang in POSIX | {"python"} and not b.fragment for b in blocks(p))
]


def _doctest(block: Block, namespace: dict[str, Any]) -> None:
    test = doctest.DocTestParser().get_doctest(
        block.content, namespace, block.name, str(block.page), block.line
    )
    out = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test, out=out.write, clear_globs=False)
    assert runner.failures == 0, out.getvalue()


def _defines_tests(block: Block) -> bool:
    if block.content.lstrip().startswith(">>>"):
        return False
    tree = ast.parse(block.content)
    return any(isinstance(n, ast.FunctionDef) and n.name.startswith("test_") for n in tree.body)


def _python(
    block: Block, example: CodeExample, eval_example: EvalExample, namespace: dict[str, Any]
) -> None:
    if block.content.lstrip().startswith(">>>"):
        _doctest(block, namespace)
        return
    eval_example.set_config(line_length=100)
    if eval_example.update_examples:
        namespace.update(eval_example.run_print_update(example, module_globals=namespace))
    else:
        namespace.update(eval_example.run_print_check(example, module_globals=namespace))


def _shell(block: Block, namespace: dict[str, Any]) -> None:
    if block.lang == "console":
        answers = namespace.pop("answers", None)
        for command, want in session(block.content):
            compare(command, want, run_command(command, answers))
        return
    done = run_script(block.content)
    assert done.returncode == 0, (
        f"{block.name} exited {done.returncode}\n{block.content}\n"
        f"--- stdout ---\n{done.stdout}--- stderr ---\n{done.stderr}"
    )


def _pytest(test_blocks: list[Block], directory: Path) -> None:
    """Blocks that are a bot's tests run under pytest, as the bot's own suite would."""
    directory.mkdir()
    files = []
    for block in test_blocks:
        path = directory / f"test_{block.page.stem.replace('-', '_')}_{block.line}.py"
        path.write_text(block.content, encoding="utf-8")
        files.append(str(path))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files],
        capture_output=True,
        text=True,
        cwd=directory,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("page", RUNNABLE)
def test_the_page_runs(
    page: Path, docs_env: dict[str, str], eval_example: EvalExample, tmp_path: Path
) -> None:
    examples = {e.start_line: e for e in find_examples(page)}
    namespace: dict[str, Any] = {"worlds": worlds}
    test_blocks = []
    try:
        for block in blocks(page):
            if block.fragment or block.lang not in POSIX | {"python"}:
                continue
            if block.mark == "setup":
                exec(compile(block.context, f"{block.name} (setup)", "exec"), namespace)
            if block.lang == "python":
                _python(block, examples[block.line], eval_example, namespace)
                if _defines_tests(block):
                    test_blocks.append(block)
            else:
                _shell(block, namespace)
        if test_blocks:
            _pytest(test_blocks, tmp_path / "bot-tests")
    finally:
        for value in namespace.values():
            if isinstance(value, PrometheusMetrics):
                value.unregister()
        stopped = worlds.stop()  # a `serve` a setup started, before the servers are cleaned
    assert not stopped, "\n".join(stopped)


SHELL_FRAGMENTS = [b for p in PAGES for b in blocks(p) if b.fragment and b.lang in POSIX]


@pytest.mark.parametrize("block", SHELL_FRAGMENTS, ids=lambda b: b.name)
def test_a_shell_fragment_is_still_valid_shell(block: Block) -> None:
    if block.lang == "console":
        script = "\n".join(command for command, _ in session(block.content))
    else:
        script = block.content
    done = check_syntax(script)
    assert done.returncode == 0, done.stderr

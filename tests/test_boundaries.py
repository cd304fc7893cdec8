"""The shape of the code holds: the environment is read at the edges only, and no import cycle.

These read the source (with :mod:`ast`), so that a new module cannot quietly break the rules.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import Isolated, run
from tests.servers import FakeOpenAI

PACKAGE = Path(__file__).resolve().parent.parent / "chatcli"

#: The one function that reads the process environment.
READER = "chatcli/config.py"
#: The edges that may call it: the command line's context, the Python API and the seed API.
EDGES = {"chatcli/context.py", "chatcli/api.py", "chatcli/providers/base.py"}


def modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        name = str(path.relative_to(PACKAGE.parent))
        yield name, ast.parse(path.read_text(), filename=name)


def test_only_config_reads_the_process_environment() -> None:
    found = []
    for name, tree in modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in (
                "environ",
                "environb",
                "getenv",
                "putenv",
                "unsetenv",
            ):
                found.append(f"{name}:{node.lineno} .{node.attr}")
            if isinstance(node, ast.ImportFrom) and node.module == "os":
                names = {alias.name for alias in node.names}
                if names & {"environ", "getenv", "environb"}:
                    found.append(f"{name}:{node.lineno} from os import {names}")
    assert [f for f in found if not f.startswith(f"{READER}:")] == []
    assert found, "config.environment() reads os.environ: the scan must see it"


def test_only_the_edges_take_a_snapshot_of_the_environment() -> None:
    callers = set()
    for name, tree in modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
                if called == "environment":
                    callers.add(name)
    assert callers == EDGES


def _module_name(path: str) -> str:
    name = path.removesuffix(".py").replace("/", ".")
    return name.removesuffix(".__init__")


def _top_level_imports(name: str, tree: ast.Module) -> set[str]:
    """chatcli modules imported when ``name`` is imported (not inside functions, not only for
    type checking)."""
    found: set[str] = set()
    package = name if name.endswith("__init__") else name.rpartition(".")[0]
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for child in ast.walk(node) if not isinstance(node, ast.FunctionDef | ast.ClassDef) else []:
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.startswith("chatcli"))
            elif isinstance(child, ast.ImportFrom) and child.module:
                module = child.module
                if child.level:
                    module = package.rsplit(".", child.level - 1)[0] + "." + module
                if module.startswith("chatcli"):
                    found.add(module)
                    found.update(f"{module}.{a.name}" for a in child.names)
    return found


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {}
    for path, tree in modules():
        graph[_module_name(path)] = _top_level_imports(_module_name(path), tree)
    known = set(graph)
    for name in graph:
        # Importing a.b.c imports its packages a and a.b first.
        edges = {m for m in graph[name] if m in known}
        graph[name] = {e for e in edges if e != name}

    def cycle_from(start: str) -> list[str] | None:
        stack: list[tuple[str, list[str]]] = [(start, [start])]
        seen: set[str] = set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    return [*trail, start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*trail, nxt]))
        return None

    # The scan sees real edges (so an empty graph cannot pass for an acyclic one).
    assert "chatcli.core" in graph["chatcli.providers.base"]
    assert "chatcli.config" in graph["chatcli.store"]
    cycles = [c for name in sorted(graph) if (c := cycle_from(name)) is not None]
    assert cycles == [], " -> ".join(cycles[0]) if cycles else ""


# -- at run time ----------------------------------------------------------------------------------


def test_the_in_process_runner_catches_a_read_of_the_process_environment() -> None:
    from chatcli.config import environment
    from tests.conftest import _guarded_environ

    with _guarded_environ() as guard:
        environment()  # the edge's reader: exactly what a command run in-process must not reach
    assert guard.reads and "chatcli/config.py" in guard.reads[0]
    assert not isinstance(os.environ, type(guard))  # and the real one is back


def test_an_in_process_ask_with_a_proxy_and_a_session_reads_only_its_context(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    # run() fails the test on any read of os.environ from chatcli's code; this run goes
    # through settings, the proxy choice, the provider, the session store and the renderer.
    result = run(
        ["ask", "-p", "ollama", "-m", "m", "--base-url", fake.base_url, "-S", "s", "-v", "hi"],
        isolated,
        env={"NO_PROXY": "*", "HTTP_PROXY": "http://localhost:9", "CHATCLI_DEBUG": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Hello, world!\n"
    assert "chatcli" in result.stderr  # -v and CHATCLI_DEBUG (from the context) were seen

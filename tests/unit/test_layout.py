"""The layout rules of ARCHITECTURE.md, checked on the tree itself: no import cycles, a core that names no
platform, and one folder per registered channel kind holding its adapter (and its stand-in, where it has one)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from syndicate.channel import adapter_kinds
from syndicate.sandbox import standins
from tests.support import ENDPOINT_OPTIONS

REPO = Path(__file__).resolve().parents[2]


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Every import between our modules, at any depth (function-level and TYPE_CHECKING ones included: a cycle
    hidden in a function is still a cycle)."""
    paths = {_module_name(p): p for top in ("syndicate", "adapters") for p in (REPO / top).rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in paths}
    for name, path in paths.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            graph[name].update(t for t in targets if t in paths and t != name)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    assert _cycles(_import_graph()) == []


def test_the_core_imports_no_adapter() -> None:
    graph = _import_graph()
    leaks = {mod: sorted(t for t in targets if t.startswith("adapters")) for mod, targets in graph.items()}
    assert {mod: t for mod, t in leaks.items() if mod.startswith("syndicate") and t} == {}


#: Channel kinds that are ordinary words of the trade, not platforms: the core may speak of an app, a website, a
#: feed, a webhook or a partner in general.
GENERIC_WORDS = frozenset({"app", "website", "rss", "webhook", "partner"})


def _platform_words() -> set[str]:
    """Every registered kind, the platform name each stand-in records under, and the words of each adapter's
    class name (WeChatAdapter -> wechat), less the generic ones: what the core must never say."""
    installed = {kind: cls for kind, cls in adapter_kinds().items() if cls.__module__.startswith("adapters.")}
    words = set(installed) | set(standins())
    for cls in installed.values():
        words.add(cls.__name__.removesuffix("Adapter").lower())
    words.update(standin.platform.lower() for standin in standins().values())
    # "x" cannot be searched for as a word; the X channel's other names (its library) are.
    return {w for w in words if len(w) > 1} - GENERIC_WORDS | {"twitter", "tweepy"}


def test_the_core_names_no_platform() -> None:
    pattern = re.compile(r"\b(" + "|".join(sorted(map(re.escape, _platform_words()))) + r")\b", re.IGNORECASE)
    hits = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in sorted((REPO / "syndicate").rglob("*"))
        if path.suffix in {".py", ".j2", ".js", ".css", ".sql", ".toml"}
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if pattern.search(line)
    ]
    assert hits == []


def test_each_kind_is_one_folder_with_its_stand_in() -> None:
    for kind, cls in adapter_kinds().items():
        if not cls.__module__.startswith("adapters."):
            continue  # registered at run time by a test
        assert cls.__module__ == f"adapters.{kind}.adapter", f"{kind}: the adapter belongs in adapters/{kind}/"
    for kind, standin in standins().items():
        assert kind in adapter_kinds(), f"stand-in {kind!r} stands in for no registered channel kind"
        where = standin.setup.__module__
        assert where == f"adapters.{kind}.standin", f"{kind}: the stand-in belongs in adapters/{kind}/"


def test_every_kind_that_talks_to_a_platform_brings_a_whole_stand_in() -> None:
    """The soak and the security sweep reach each platform kind through its stand-in alone (``Standin``: how to
    point a channel at it, accept its credentials, and say what it posted), so a kind without one would go untested."""
    found = standins()
    for kind, cls in adapter_kinds().items():
        if cls.__module__.startswith("adapters.") and ENDPOINT_OPTIONS & set(cls.options_model.model_fields):
            assert kind in found, f"{kind} talks to a platform but registers no syndicate.sandboxes stand-in"
            assert found[kind].posts_made is not None, f"the {kind} stand-in does not say what it posted"

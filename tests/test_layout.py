"""The tree shows the flow: each folder of oom_journal/ is a stage, and an import may only point
down the flow (to an earlier stage, or to the leaves), never up, and no module imports itself
back through others. Read from the source with ast, every import counted (also those inside
functions, which is how the optional sink libraries are imported)."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "oom_journal"
# The stages, in the order the data flows (README "Layout"); the leaves import nothing of ours.
ORDER = ["<leaf>", "sources", "parse", "procs", "enrich", "outputs", "store", "sinks", "delivery", "history", "app"]
LEAVES = {"oom_journal", "oom_journal.model", "oom_journal.text", "oom_journal.redact", "oom_journal.records"}


def modules() -> dict:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports_of(name: str, path: Path, known: dict) -> set:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{name}: relative import (use oom_journal.<stage>.<module>)"
            base = node.module or ""
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.add(full if full in known else base)
        elif isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
    return {m for m in out if m == "oom_journal" or m.startswith("oom_journal.")}


def stage(module: str) -> int:
    if module in LEAVES:
        return 0
    return ORDER.index(module.split(".")[1])


def test_every_module_is_in_a_stage():
    for name in modules():
        if name == "oom_journal.__main__":
            continue
        assert name in LEAVES or name.split(".")[1] in ORDER, f"{name} is in no stage (README 'Layout')"


def test_imports_point_only_down_the_flow():
    known = modules()
    wrong = []
    for name, path in known.items():
        if name == "oom_journal.__main__":
            continue
        for target in imports_of(name, path, known):
            if name in LEAVES and target not in ("oom_journal", "oom_journal.records"):  # (it imports nothing of ours)
                wrong.append(f"{name} (a leaf) imports {target}")
            elif stage(target) > stage(name):
                wrong.append(f"{name} ({ORDER[stage(name)]}) imports {target} ({ORDER[stage(target)]}), up the flow")
    assert not wrong, "\n".join(wrong)


def test_the_sinks_import_only_the_model_the_leaves_and_their_base():
    known = modules()
    for name, path in known.items():
        if name.startswith("oom_journal.sinks."):
            for target in imports_of(name, path, known):
                assert target in LEAVES or target.startswith("oom_journal.sinks"), f"{name} imports {target}"


def test_no_import_cycle():
    known = modules()
    graph = {name: imports_of(name, path, known) & set(known) for name, path in known.items()}
    # a package's __init__ is imported by its modules' import; that edge is Python's, not ours
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt.startswith(node + ".") or node.startswith(nxt + "."):
                continue
            if state.get(nxt) == "open":
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)

"""The package's modules import downward: no import cycle, lazy (in-function) imports included."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "torchrl_vlm"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module → the package modules it imports anywhere in its body (``from a import b`` counts as ``a.b`` where
    ``a.b`` is a module)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                           for a in node.names]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_cycles_finds_a_planted_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_of_the_package_imports_one_that_imports_it_back():
    graph = import_graph()
    assert cycles(graph) == []


def test_the_scoring_interface_imports_no_backend():
    graph = import_graph()
    assert not graph["torchrl_vlm.scoring.service"] & {"torchrl_vlm.scoring.process_service",
                                                       "torchrl_vlm.scoring.ray_service"}


def test_the_replay_buffers_know_no_env_family():
    """A buffer meant for any env imports no env module: missions reach it through torchrl_vlm.missions."""
    graph = import_graph()
    for buffer in ("torchrl_vlm.scoring.buffer", "torchrl_vlm.scoring.writeback", "torchrl_vlm.covr.buffer",
                   "torchrl_vlm.replay.buffer"):
        assert not {m for m in graph[buffer] if m.startswith("torchrl_vlm.envs")}, buffer

"""The shape of the code, as the README's architecture section states it: imports form a tree, one module
chooses the backend, the job rules live in one module, and no file in api/ outgrows a sitting's read."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("neural_net", "api")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _type_checking_only(node: ast.AST, parents: dict) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its body (inside functions too, so a lazy import
    cannot hide a circle). Importing `a.b` also runs `a`, as for every Python module: parents are no edges.
    Imports under `if TYPE_CHECKING:` never run and are left out."""
    mods = modules()
    graph: dict[str, set[str]] = {name: set() for name in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text())
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                submodules = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in mods]
                targets = submodules if len(submodules) == len(node.names) else [base, *submodules]
            else:
                continue
            if _type_checking_only(node, parents):
                continue
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
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

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_imports_form_a_tree():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_lazy_circle():
    graph = {"api.a": {"api.b"}, "api.b": {"api.c"}, "api.c": {"api.a"}, "api.d": set()}
    assert cycles(graph) == [["api.a", "api.b", "api.c"]]


def test_the_core_imports_nothing_of_the_service():
    graph = import_graph()
    assert not {target for name, targets in graph.items() if name.startswith("neural_net") for target in targets
                if target.startswith("api")}


def test_layers_point_down():
    """routes -> services -> (runners, storage) -> neural_net: nothing below the routes imports them, and the
    runners and the stores never import the request-facing service."""
    graph = import_graph()
    for name, targets in graph.items():
        if not name.startswith("api.routes") and name not in ("api.app",):
            assert not {t for t in targets if t.startswith("api.routes")}, name
        if name.startswith(("api.storage", "api.worker", "api.rq_runner", "api.search_trials", "api.records")):
            assert "api.services" not in targets, name


def test_one_module_chooses_the_backend():
    choosing = sorted(str(path.relative_to(ROOT)) for path in modules().values()
                      if "settings.backend" in path.read_text() and path.name != "settings.py")
    assert choosing == ["api/backend.py"]


def test_no_file_in_api_is_over_500_lines_and_the_redis_store_under_450():
    sizes = {str(path.relative_to(ROOT)): len(path.read_text().splitlines()) for path in (ROOT / "api").rglob("*.py")}
    assert {path: n for path, n in sizes.items() if n > 500} == {}
    assert sizes["api/storage/redis_store.py"] < 450

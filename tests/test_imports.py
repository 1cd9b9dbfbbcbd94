"""The package's import graph: every module imports, no circle, no library module imports a
binary (a module runnable with `python -m`)."""

import ast
import importlib
import pathlib
import pkgutil

import lookahead_drift

PACKAGE = pathlib.Path(lookahead_drift.__file__).resolve().parent
BINARIES = {"train", "sample", "evaluate", "fid", "train_encoder"}


def _parse(path: pathlib.Path) -> ast.Module:
  return ast.parse(path.read_text(encoding="utf-8"), str(path))


def _modules() -> dict[str, ast.Module]:
  """Each module, and each subpackage as one node (its files' statements together)."""
  modules = {p.stem: _parse(p) for p in sorted(PACKAGE.glob("*.py")) if p.stem != "__init__"}
  for init in sorted(PACKAGE.glob("*/__init__.py")):
    body = [node for p in sorted(init.parent.glob("*.py")) for node in _parse(p).body]
    modules[init.parent.name] = ast.Module(body=body, type_ignores=[])
  return modules


def _imported(tree: ast.Module, known: set[str]) -> set[str]:
  """Package modules `tree` imports anywhere (top level, functions, `if __name__` blocks)."""
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module == "lookahead_drift":
      found |= {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lookahead_drift."):
      found.add(node.module.split(".")[1])
    elif isinstance(node, ast.Import):
      found |= {a.name.split(".")[1] for a in node.names
                if a.name.startswith("lookahead_drift.")}
  return found & known


def _graph() -> dict[str, set[str]]:
  modules = _modules()
  return {name: _imported(tree, set(modules) - {name}) for name, tree in modules.items()}


def _is_binary(tree: ast.Module) -> bool:
  """Whether the module has an `if __name__ == "__main__":` block."""
  return any(isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
             and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__"
             for node in tree.body)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import circle of `graph` as [a, b, ..., a], or None."""
  state: dict[str, str] = {}
  stack: list[str] = []

  def visit(node: str) -> list[str] | None:
    state[node] = "open"
    stack.append(node)
    for dep in sorted(graph[node]):
      if state.get(dep) == "open":
        return stack[stack.index(dep):] + [dep]
      if dep not in state and (found := visit(dep)):
        return found
    state[node] = "done"
    stack.pop()
    return None

  for start in sorted(graph):
    if start not in state and (found := visit(start)):
      return found
  return None


def test_cycle_finder_finds_a_planted_circle():
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
  assert _cycle({"a": {"b"}, "b": set()}) is None
  source = "def f():\n  from lookahead_drift import x\nimport lookahead_drift.y as z\n"
  assert _imported(ast.parse(source), {"x", "y", "w"}) == {"x", "y"}


def test_import_graph_has_no_circle_including_imports_inside_functions():
  graph = _graph()
  assert {"train_loop", "experiment", "inference"} <= set(graph)
  assert graph["train_loop"] >= {"experiment", "checkpoint"}  # the walk sees real edges
  assert "drift" in graph["experiment"] and graph["drift"] == set()  # a subpackage is a node
  assert _cycle(graph) is None, f"import circle: {' -> '.join(_cycle(graph))}"


def test_binaries_are_exactly_the_documented_commands_and_no_library_imports_one():
  modules = _modules()
  binaries = {name for name, tree in modules.items() if _is_binary(tree)}
  assert binaries == BINARIES
  graph = _graph()
  offenders = {name: sorted(graph[name] & BINARIES) for name in graph
               if name not in BINARIES and graph[name] & BINARIES}
  assert not offenders, f"library modules importing binaries: {offenders}"
  for name in BINARIES:  # a binary calls into the library; it is not imported by another
    assert not any(name in deps for other, deps in graph.items() if other != name)


def test_all_modules_import_together():
  names = [m.name for m in pkgutil.iter_modules(lookahead_drift.__path__, "lookahead_drift.")]
  assert {"lookahead_drift.drift", "lookahead_drift.train", "lookahead_drift.evaluate"} <= set(names)
  for name in names:  # e.g. two binaries defining --config at import time would clash here
    importlib.import_module(name)


def test_studies_import_as_a_package_and_the_library_never_imports_them():
  """experiments/ is a package (`python -m experiments.toy2d.run`, no sys.path edits); the
  library does not depend on it."""
  for name in ("experiments.stats", "experiments.toy2d.run", "experiments.toy2d.fit"):
    importlib.import_module(name)  # their flags are defined under `__main__` only: no clash
  for path in PACKAGE.rglob("*.py"):
    names = [node.module or "" for node in ast.walk(_parse(path))
             if isinstance(node, ast.ImportFrom)]
    names += [a.name for node in ast.walk(_parse(path)) if isinstance(node, ast.Import)
              for a in node.names]
    assert not [n for n in names if n.split(".")[0] == "experiments"], path

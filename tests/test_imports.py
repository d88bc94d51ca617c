"""Import direction and cycles, read from the source with ``ast`` (nothing is imported).

    pytest -q tests/test_imports.py

Layers: training (``unif2ace/train``) sits on top; checkpoint loading, the model, data,
SynthFace and inference must work without it (a user loading a model for sampling should not pull in
DeepSpeed engine code). And no two modules import each other, directly or through others —
counting imports inside functions too, since a lazy import only hides a cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "unif2ace"
BELOW_TRAIN = ("checkpoint", "model", "data", "inference", "synthface", "tokenizers", "features", "eval",
               "atomic", "schedule", "losses", "tokens", "config", "jsonfile")
"""Subpackages and top-level modules of ``unif2ace`` that must not import ``unif2ace.train``."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_main_guard(node: ast.AST) -> bool:
    # `if __name__ == "__main__":` runs only when the file is the program, never on import.
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(tree: ast.AST, modules: set[str]) -> set[str]:
    """Package modules imported anywhere in ``tree`` (functions included) except under a
    ``__main__`` guard or ``TYPE_CHECKING``. ``from pkg import submodule`` counts as an import
    of the submodule only (the package's ``__init__`` re-exports are not edges of the module)."""
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _is_main_guard(node) or _is_type_checking(node):
            return
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in modules:
            subs = {f"{node.module}.{a.name}" for a in node.names} & modules
            out.update(subs)
            if len(subs) < len(node.names):
                out.add(node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    names = set(files)
    return {m: _imports(ast.parse(p.read_text(), str(p)), names) - {m} for m, p in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_graph_sees_the_package():
    g = import_graph()
    # the reader must find real edges, or the two tests below would pass vacuously
    assert "unif2ace.config" in g["unif2ace.model.unif2ace"]
    assert "unif2ace.checkpoint.run_config" in g["unif2ace.train.checkpointing"]
    assert "unif2ace.model.unif2ace" in g["unif2ace.model.params"]  # a function-level import
    assert "unif2ace.train" not in BELOW_TRAIN and all(
        any(m.split(".")[1] == b for m in g if m.count(".")) for b in BELOW_TRAIN)  # every layer listed exists


def test_training_reaches_checkpoints_through_the_one_dispatcher():
    """train → checkpoint, never the reverse: ``train.init_from`` loads through
    ``checkpoint.load.load_model``; the layout names training writes live in checkpoint/."""
    g = import_graph()
    assert "unif2ace.checkpoint.load" in g["unif2ace.train.engine"]
    assert "unif2ace.checkpoint.adapters" not in g["unif2ace.train.engine"]  # only via the dispatcher
    assert {"unif2ace.checkpoint.expert_shards", "unif2ace.atomic"} <= g["unif2ace.train.expert_parallel"]
    for user in ("unif2ace.checkpoint.hf_io", "unif2ace.tokenizers.magvit", "unif2ace.eval.attribute_classifier"):
        assert "unif2ace.checkpoint.safetensors_dir" in g[user], user


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_nothing_below_training_imports_training():
    bad = [f"{m} imports {d}" for m, deps in sorted(import_graph().items())
           if m.split(".")[1:2] and m.split(".")[1] in BELOW_TRAIN
           for d in sorted(deps) if d == "unif2ace.train" or d.startswith("unif2ace.train.")]
    assert not bad, bad


def test_generic_data_does_not_import_synthface():
    # SynthFace is one data set among others: the data layer reads it through the generic
    # source adapter (its on-disk layout is SourceConfig's default), never by importing it.
    bad = [f"{m} imports {d}" for m, deps in sorted(import_graph().items())
           if m.startswith("unif2ace.data.") or m == "unif2ace.data"
           for d in sorted(deps) if d.startswith("unif2ace.synthface")]
    assert not bad, bad


def test_no_import_cycles():
    assert cycles(import_graph()) == []

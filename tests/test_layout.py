"""The package's import structure follows the architecture.

* no import cycles between modules of src/starlabel, counting imports inside functions
  (imports under ``if TYPE_CHECKING:`` are annotations only and are not counted);
* one subpackage uses another only through its public ``__init__`` names, never a
  private module (``starlabel._internal`` is the shared-helpers exception);
* the subpackages depend on each other in the architecture's order
  (data → survey → inference → models → mixtures → evaluate → demo → pipeline → cli).

* no module in src/starlabel is longer than ``MAX_LINES`` (one concept per module).

* abstract attributes are real: no module that writes ``eqx.AbstractVar[...]`` postpones
  its annotations (equinox reads a string annotation as a plain field and never checks it),
  and a concrete class that leaves one undefined is refused.

``KNOWN_CYCLES`` and ``KNOWN_PRIVATE_IMPORTS`` list what is still to be untangled
(empty since the typed test step), ``KNOWN_LONG`` the modules being split; the tests fail
on anything new, and on a listed entry that has been fixed, so that the lists only shrink.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "starlabel"
SHARED = {"_internal", "_errors", "_version"}
LAYERS = ["data", "survey", "inference", "models", "mixtures", "evaluate", "demo", "pipeline", "cli"]

KNOWN_CYCLES: set[frozenset[str]] = set()
KNOWN_PRIVATE_IMPORTS: set[tuple[str, str]] = set()
MAX_LINES = 600
# Being split by other helpers at the time of writing; the lead empties this after merging.
KNOWN_LONG: set[str] = set()


def _modules(root: Path = SRC) -> dict[str, tuple[Path, bool]]:
    """Dotted name (relative to ``root``; the root package is ``""``) → (file, is a package)."""
    found = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        found[".".join(parts)] = (path, is_package)
    return found


def _runtime_imports(tree: ast.Module) -> list[ast.ImportFrom]:
    """Relative ``from`` imports anywhere (functions included), skipping ``if TYPE_CHECKING:`` blocks."""
    out: list[ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom) and node.level:
            out.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def _resolve(package: list[str], node: ast.ImportFrom) -> str:
    """The absolute (root-relative) module a relative ``from`` import names."""
    base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
    return ".".join([*base, *([node.module] if node.module else [])])


def _lazy_exports(modules: dict[str, tuple[Path, bool]]) -> dict[str, dict[str, str]]:
    """Package → {name: module it loads} for ``__init__`` files that end in ``lazy_exports``.

    Such a package imports the module behind a name when the name is looked up
    (``from ..models import fit_binary`` runs models/_binary.py), so that lookup is an edge.
    """
    out: dict[str, dict[str, str]] = {}
    for name, (path, is_package) in modules.items():
        source = path.read_text()
        if not is_package or "lazy_exports(" not in source:
            continue
        exports = {}
        for node in ast.parse(source).body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                for statement in node.body:
                    if isinstance(statement, ast.ImportFrom) and statement.level:
                        target = _resolve(name.split(".") if name else [], statement)
                        for alias in statement.names:
                            submodule = f"{target}.{alias.name}".strip(".")
                            exports[alias.asname or alias.name] = (
                                submodule if submodule in modules else target
                            )
        out[name] = exports
    return out


def _ancestors(module: str) -> list[str]:
    """The packages whose ``__init__`` runs before ``module`` does (root ``""`` left out)."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _named(root: Path = SRC) -> dict[str, set[str]]:
    """Module → the modules its imports name (a package for a name from its ``__init__``)."""
    modules = _modules(root)
    edges: dict[str, set[str]] = defaultdict(set)
    for name, (path, is_package) in modules.items():
        package = [part for part in (name.split(".") if is_package else name.split(".")[:-1]) if part]
        for node in _runtime_imports(ast.parse(path.read_text())):
            target = _resolve(package, node)
            for alias in node.names:
                candidate = f"{target}.{alias.name}".strip(".")
                module = candidate if candidate in modules else target
                if module in modules and module != name:
                    edges[name].add(module)
    return edges


def _edges(root: Path = SRC) -> dict[str, set[str]]:
    """Module → modules whose code runs when it imports (counting imports inside functions).

    ``from .cannon._nuts import f`` runs ``cannon/__init__.py`` (and everything it imports)
    before ``cannon/_nuts.py``, so it is an edge to both; packages that hold the importing
    module are left out (they are already in ``sys.modules`` while it runs). A name that a
    lazy package exports is an edge to the module that defines it.
    """
    modules = _modules(root)
    lazy = _lazy_exports(modules)
    edges: dict[str, set[str]] = defaultdict(set)
    for name, (path, is_package) in modules.items():
        package = name.split(".") if is_package else name.split(".")[:-1]
        package = [part for part in package if part]
        running = {name, *_ancestors(name)}
        for node in _runtime_imports(ast.parse(path.read_text())):
            target = _resolve(package, node)
            for alias in node.names:
                candidate = f"{target}.{alias.name}".strip(".")
                if candidate in modules:
                    imported = [candidate]
                else:
                    imported = [target, lazy.get(target, {}).get(alias.name, target)]
                for module in imported:
                    for runs in [*_ancestors(module), module]:
                        if runs in modules and runs not in running:
                            edges[name].add(runs)
    return edges


def _cycles(edges: dict[str, set[str]]) -> set[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.add(frozenset(component))

    for v in list(edges):
        if v not in index:
            connect(v)
    return found


def _top(module: str) -> str:
    return module.split(".")[0]


def test_no_new_import_cycles() -> None:
    cycles = _cycles(_edges())
    assert cycles - KNOWN_CYCLES == set(), f"new import cycles: {cycles - KNOWN_CYCLES}"
    assert KNOWN_CYCLES - cycles == set(), f"fixed; remove from KNOWN_CYCLES: {KNOWN_CYCLES - cycles}"


def test_subpackages_use_each_other_through_public_names() -> None:
    private = set()
    for source, targets in _named().items():
        for target in targets:
            crossing = _top(source) != _top(target) and _top(target) not in SHARED and "." in source
            if crossing and any(part.startswith("_") for part in target.split(".")[1:]):
                private.add((source, target))
    assert private - KNOWN_PRIVATE_IMPORTS == set(), f"new private imports: {private - KNOWN_PRIVATE_IMPORTS}"
    assert KNOWN_PRIVATE_IMPORTS - private == set(), f"fixed; remove: {KNOWN_PRIVATE_IMPORTS - private}"


def test_subpackages_follow_the_architecture_order() -> None:
    backwards = set()
    for source, targets in _named().items():
        for target in targets:
            s, t = _top(source), _top(target)
            if s in LAYERS and t in LAYERS and LAYERS.index(t) > LAYERS.index(s):
                backwards.add((source, target))
    assert backwards == set(), f"imports against the data → … → cli order: {sorted(backwards)}"


def test_no_module_is_longer_than_the_limit() -> None:
    lengths = {
        path.relative_to(SRC).as_posix(): len(path.read_text().splitlines()) for path in SRC.rglob("*.py")
    }
    long = {name for name, n in lengths.items() if n > MAX_LINES}
    new = {name: lengths[name] for name in sorted(long - KNOWN_LONG)}
    assert not new, f"modules over {MAX_LINES} lines (split them by concept): {new}"
    assert KNOWN_LONG - long == set(), f"now short enough; remove from KNOWN_LONG: {KNOWN_LONG - long}"


def test_the_checker_sees_a_cycle_and_a_private_import(tmp_path) -> None:
    edges = {"a._x": {"b._y"}, "b._y": {"a._x"}, "c": {"a._x"}}
    assert _cycles(edges) == {frozenset({"a._x", "b._y"})}
    tree = ast.parse(
        "if TYPE_CHECKING:\n    from .a import b\nelse:\n    from .c import d\nfrom .e import f\n"
    )
    assert [node.module for node in _runtime_imports(tree)] == ["c", "e"]


def test_the_checker_follows_package_init_and_function_imports(tmp_path) -> None:
    """The shape of the cycle that reverted 819c0d2: a generic module imports a private
    module of a family package, whose ``__init__`` imports the family's model, whose
    method imports the generic module back (here inside a function)."""
    files = {
        "__init__.py": "",
        "generic.py": "from .family._helpers import helper\n",
        "family/__init__.py": "from ._model import Model as Model\n",
        "family/_helpers.py": "def helper():\n    return 1\n",
        "family/_model.py": "class Model:\n    def infer(self):\n        from ..generic import helper\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert _cycles(_edges(tmp_path)) == {frozenset({"generic", "family", "family._model"})}
    assert _cycles(_named(tmp_path)) == set()  # what the checker saw before: no cycle


def _postponed_abstract_vars(root: Path = SRC) -> list[str]:
    """Modules with ``from __future__ import annotations`` that annotate with AbstractVar."""
    found = []
    for name, (path, _) in _modules(root).items():
        tree = ast.parse(path.read_text())
        postponed = any(
            isinstance(node, ast.ImportFrom)
            and node.module == "__future__"
            and any(alias.name == "annotations" for alias in node.names)
            for node in tree.body
        )
        uses = any(
            isinstance(node, ast.AnnAssign)
            and any(
                isinstance(sub, ast.Name | ast.Attribute)
                and (sub.id if isinstance(sub, ast.Name) else sub.attr) in {"AbstractVar", "AbstractClassVar"}
                for sub in ast.walk(node.annotation)
            )
            for node in ast.walk(tree)
        )
        if postponed and uses:
            found.append(name)
    return sorted(found)


def test_abstract_vars_are_not_postponed_annotations(tmp_path) -> None:
    assert _postponed_abstract_vars() == []
    (tmp_path / "bad.py").write_text(
        "from __future__ import annotations\nimport equinox as eqx\n"
        "class A(eqx.Module):\n    x: eqx.AbstractVar[int]\n"
    )
    (tmp_path / "good.py").write_text(
        "import equinox as eqx\nclass A(eqx.Module):\n    x: eqx.AbstractVar[int]\n"
    )
    assert _postponed_abstract_vars(tmp_path) == ["bad"]


def test_a_concrete_class_missing_an_abstract_var_is_refused() -> None:
    import equinox as eqx
    import jax.numpy as jnp
    import pytest

    from starlabel.inference import AbstractLabelPrior
    from starlabel.models import AbstractFluxModel

    class Partial(AbstractFluxModel):  # no `box`
        label_names: tuple[str, ...] = eqx.field(static=True)
        s2: jnp.ndarray
        pixel_ok: jnp.ndarray
        train_labels: jnp.ndarray

        def flux(self, labels):
            return jnp.ones_like(self.s2)

    class Complete(Partial):
        box: jnp.ndarray

    assert AbstractFluxModel.__abstractvars__ == {"label_names", "s2", "pixel_ok", "train_labels", "box"}
    assert Partial.__abstractvars__ == {"box"}
    arrays = (jnp.zeros(3), jnp.ones(3, bool), jnp.zeros((4, 1)))
    with pytest.raises(TypeError, match="abstract attributes {'box'}"):
        Partial(("teff",), *arrays)
    whole = Complete(("teff",), *arrays, jnp.zeros((2, 1)))
    # The abstract base adds no dataclass field of its own: the subclass's order stands.
    assert [f.name for f in Complete.__dataclass_fields__.values()] == [
        "label_names",
        "s2",
        "pixel_ok",
        "train_labels",
        "box",
    ]
    assert whole.n_labels == 1

    assert AbstractLabelPrior.__abstractvars__ == {"label_names"}

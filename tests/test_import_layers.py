"""The package's import graph: no cycle, and data flows one way through the layers.

Imports are read from the source (``ast``), module level and function level alike, so a cycle
hidden behind a lazy import fails too. Imports under ``if TYPE_CHECKING:`` are left out: they
name types for annotations and never run.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import ovs3d_nerfstudio

PACKAGE = "ovs3d_nerfstudio"
ROOT = Path(ovs3d_nerfstudio.__file__).parent

LAYERS: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("foundation", ("errors", "palette", "variants", "checkpoints", "legend_image")),
    ("teachers", ("teachers",)),
    ("features", ("features",)),
    ("data", ("data", "config_checks", "vlg.ply", "vlg.voxels")),
    ("field", ("field", "splat.rasterize_torch", "splat.rasterize", "splat.gaussians", "vlg.sparse_conv", "vlg.minkunet")),
    ("losses", ("losses", "schedule", "evaluation", "queries", "splat.scoring")),
    ("model", ("model", "viewer", "splat.model", "splat.datamanager")),
    ("pipeline", ("pipeline", "splat.pipeline", "process", "bundled_ffmpeg")),
    (
        "surfaces",
        (
            "runs",
            "training",
            "legend",
            "export",
            "camera_paths",
            "demo",
            "config",
            "splat.config",
            "dataparser_config",
            "synthetic",
            # The point-cloud and splat subpackages themselves; their modules are placed one by
            # one above (the first layer that names a module wins).
            "vlg",
            "splat",
        ),
    ),
)
"""Each layer may import its own and the layers above it in this list, never one below.
A name is a module or a subpackage (all of its modules); the first layer that names a module
wins, so ``splat``'s rasterizers and Gaussians sit with the field, its latent-space scoring with the
losses, its model and datamanager with the model, its pipeline with the pipeline and its method
specification with the surfaces. ``foundation`` holds what every layer
may use: errors, the palette and its legend, the variant options, checkpoint allow-listing."""

KNOWN_BACKWARD_IMPORTS: Set[Tuple[str, str]] = set()
"""Backward imports (importer, imported; names below the package) that remain to be cut."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: Dict[str, Path] = {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def _is_type_checking_block(node: ast.AST) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if _is_type_checking_block(child):
                stack.extend(child.orelse)
            else:
                stack.append(child)


def _known_module(name: str) -> Optional[str]:
    """The package module ``name`` refers to: itself, or the module that defines the attribute."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_in(source: str, module: str, is_package: bool = False) -> Set[str]:
    """Package modules that ``source``, the code of ``module``, imports at run time (anywhere in it)."""
    package = module if is_package else module.rpartition(".")[0]
    found: Set[str] = set()
    for node in _runtime_nodes(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            target = _known_module(name) if name.startswith(PACKAGE) else None
            if target is not None and target != module:
                found.add(target)
    return found


GRAPH: Dict[str, Set[str]] = {
    module: imports_in(path.read_text(encoding="utf-8"), module, path.name == "__init__.py")
    for module, path in MODULES.items()
}


def short(module: str) -> str:
    return module.removeprefix(PACKAGE + ".")


def layer_of(module: str) -> Optional[int]:
    name = short(module)
    for index, (_, members) in enumerate(LAYERS):
        if any(name == member or name.startswith(member + ".") for member in members):
            return index
    return None


def find_cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    components: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_the_reader_sees_function_level_and_relative_imports_not_type_checking_ones():
    source = (
        "from typing import TYPE_CHECKING\n"
        "import ovs3d_nerfstudio.field\n"
        "if TYPE_CHECKING:\n    from ovs3d_nerfstudio.model import Ovs3dModel\n"
        "def f():\n    from ovs3d_nerfstudio.losses import rda_loss\n    from . import palette\n"
        "    from .data.labels import IGNORE\n"
    )
    assert imports_in(source, "ovs3d_nerfstudio.viewer") == {
        "ovs3d_nerfstudio.field",
        "ovs3d_nerfstudio.losses",
        "ovs3d_nerfstudio.palette",
        "ovs3d_nerfstudio.data.labels",
    }


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_import_graph_has_no_cycle():
    cycles = find_cycles(GRAPH)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(short(m) for m in cycle) for cycle in cycles)


def test_every_module_has_a_layer():
    unplaced = [short(module) for module in MODULES if module != PACKAGE and layer_of(module) is None]
    assert not unplaced, f"place these modules in a layer of LAYERS: {unplaced}"


def test_imports_go_down_the_layers_only():
    backward = set()
    for module, targets in GRAPH.items():
        for target in targets:
            importer, imported = layer_of(module), layer_of(target)
            if importer is not None and imported is not None and imported > importer:
                backward.add((short(module), short(target)))
    assert backward - KNOWN_BACKWARD_IMPORTS == set(), "imports against the data flow"
    # An exception that has been fixed must leave the list, so it cannot come back unnoticed.
    assert KNOWN_BACKWARD_IMPORTS - backward == set(), "fixed: remove from KNOWN_BACKWARD_IMPORTS"


def test_the_package_itself_imports_nothing():
    assert GRAPH[PACKAGE] == set()

"""The package's shape: no import circles, and nothing below imports upward.

Layers, bottom to top: foundations (settings, device, data, metrics, memory) ->
the repository -> model kinds -> the engine -> HTTP. Tools (serving, replicas, balancer,
autoscaler, traces, scaling_loop, manifests, ray_serving, loadgen, plots, grading) drive
servers from outside; edge_measure times models from outside. Imports inside functions
count: a lazy import upward is still an import upward.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "helpers"

FOUNDATIONS = {"settings", "device", "data", "metrics", "memory", "toollogs"}
REPOSITORY = {"repository"}
MODEL_KINDS = {"models", "wafermaps", "embedder", "training", "gpt", "kv_cache", "onnx_models",
               "compression", "distillation"}
ENGINE = {"batching", "bucketing", "cache", "registry", "routing", "jobs", "inference",
          "scheduling", "generation", "generation_service", "shared_cache", "protocol"}
HTTP = {"server", "http_guards"} | {f"routes.{p.stem}" for p in (PACKAGE / "routes").glob("*.py")
                                     if p.stem != "__init__"} | {"routes"}
LAYERS = [FOUNDATIONS, REPOSITORY, MODEL_KINDS, ENGINE, HTTP]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__")


def imports_of(path: Path) -> set[str]:
    """The helpers modules ``path`` imports (relative or absolute), anywhere in the file."""
    here = module_name(path).split(".")
    package = here[:-1] if path.name != "__init__.py" else here
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1] if node.level > 1 else package
                target = ".".join([*base, node.module] if node.module else base)
                names = [f"{target}.{a.name}" if target else a.name for a in node.names]
                candidates = [target, *names] if target else names
            elif (node.module or "").startswith("helpers"):
                target = node.module.removeprefix("helpers").lstrip(".")
                candidates = [target, *(f"{target}.{a.name}".lstrip(".") for a in node.names)]
            else:
                continue
            found |= {c for c in candidates if c and _exists(c)}
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("helpers.") for a in node.names
                      if a.name.startswith("helpers.") and _exists(a.name[8:])}
    return found - {module_name(path)}


def _exists(name: str) -> bool:
    path = PACKAGE.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


GRAPH = {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def layer_of(name: str) -> int | None:
    for i, layer in enumerate(LAYERS):
        if name in layer:
            return i
    return None


def test_every_module_has_a_place():
    tools = {"serving", "loadgen", "plots", "grading", "balancer", "replicas", "autoscaler",
             "traces", "scaling_loop", "manifests", "ray_serving", "edge_measure", ""}
    unplaced = [m for m in GRAPH if layer_of(m) is None and m not in tools]
    assert not unplaced, f"place these modules in a layer of test_layout.py: {unplaced}"


def test_there_is_no_import_circle():
    seen, on_path = set(), []

    def visit(node):
        if node in on_path:
            pytest.fail(f"import circle: {' -> '.join(on_path[on_path.index(node):] + [node])}")
        if node in seen:
            return
        seen.add(node)
        on_path.append(node)
        for child in sorted(GRAPH.get(node, ())):
            visit(child)
        on_path.pop()

    for module in sorted(GRAPH):
        visit(module)


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if layer_of(m) is not None))
def test_nothing_imports_upward(module):
    upward = [target for target in GRAPH[module]
              if layer_of(target) is not None and layer_of(target) > layer_of(module)]
    assert not upward, f"{module} imports {upward} from a layer above it"


def test_the_engine_knows_nothing_of_http():
    source = (PACKAGE / "inference.py").read_text()
    assert "fastapi" not in source and "starlette" not in source

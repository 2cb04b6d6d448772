"""Imports go one way: the contract and the plumbing (settings, Kafka, ClickHouse, the network model) know
nothing of the services; the services (dispatcher, streams, billing, API) nothing of the commands, the
supervisor, the simulator and the benches that sit on top of them."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[1]
FOLDERS = {  # package -> folder (pyproject's package-dir)
    "suanwang": "suanwang",
    "suanwang.schemas": "schemas",
    "suanwang.dispatcher": "dispatcher",
    "suanwang.streams": "streams",
    "suanwang.billing": "billing",
    "suanwang.dashboards": "dashboards",
    "suanwang.api": "api",
    "suanwang.benches": "benches",
    "suanwang.simulator": "simulator",
    "suanwang.devstack": "devstack",
}
SERVICES = ("suanwang.dispatcher", "suanwang.streams", "suanwang.billing", "suanwang.api")
TOP = ("suanwang.cli", "suanwang.__main__", "suanwang.devstack", "suanwang.simulator", "suanwang.benches")


def layer(module: str) -> int:
    """0: contract and plumbing, 1: services, 2: commands, supervisor, simulator, benches."""
    if any(module == top or module.startswith(top + ".") for top in TOP):
        return 2
    return 1 if module.startswith(SERVICES) else 0


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            found[name] = path
    return found


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.startswith("suanwang")}


def test_every_package_folder_is_scanned() -> None:
    found = modules()
    assert {"suanwang.bus", "suanwang.schemas.topics", "suanwang.dispatcher.core", "suanwang.benches.soak"} <= set(
        found
    )
    assert layer("suanwang.benches.soak") == 2 and layer("suanwang.streams.app") == 1 and layer("suanwang.bus") == 0


def test_imports_point_down_the_layers_only() -> None:
    upward = [
        f"{module} ({layer(module)}) imports {target} ({layer(target)})"
        for module, path in modules().items()
        for target in imports(path)
        if layer(target) > layer(module)
    ]
    assert not upward, "\n".join(upward)

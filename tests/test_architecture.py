"""The architecture holds: no module of leveret imports itself back through others.

(Layers and where pika may be imported are checked by `lint-imports`, in scripts/lint.)
"""

from __future__ import annotations

import grimp


def test_no_import_cycle_between_modules() -> None:
    graph = grimp.build_graph("leveret", exclude_type_checking_imports=True)
    modules = sorted(module for module in graph.modules if module.startswith("leveret"))
    edges = {
        module: sorted(
            imported
            for imported in graph.find_modules_directly_imported_by(module)
            if imported.startswith("leveret")
        )
        for module in modules
    }
    cycles: list[list[str]] = []
    state: dict[str, str] = {}  # "active" while on the DFS path, "done" after

    def visit(module: str, path: list[str]) -> None:
        state[module] = "active"
        for imported in edges.get(module, ()):
            if state.get(imported) == "active":
                cycles.append([*path[path.index(imported) :], imported])
            elif imported not in state:
                visit(imported, [*path, imported])
        state[module] = "done"

    for module in modules:
        if module not in state:
            visit(module, [module])
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_leveret_package_offers_what_its_packages_offer() -> None:
    """`from leveret import X` for every public name of schemas, actors and services."""
    import leveret
    from leveret import actors, schemas, services
    from leveret.schemas import errors

    for package in (actors, schemas, services):
        for name in package.__all__:
            assert getattr(leveret, name) is getattr(package, name), name
    assert leveret.NotFound is errors.NotFound
    assert {"Actor", "Broker", "Message", "handler", "publish", "LeveretError"} <= set(
        leveret.__all__
    )

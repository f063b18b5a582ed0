"""The packages import in one direction only (docs/design.md, "Layers"):

    dealrec_core  <-  surrogates, finetune  <-  dealrec

Every import statement counts, function-local ones included: a cycle hidden in a function is
still a cycle (it only fails later, at the first call)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dealrec_core", "surrogates", "finetune", "dealrec")
# what each package may import, of the project's own packages
ALLOWED = {
    "dealrec_core": set(),
    "surrogates": {"dealrec_core"},
    "finetune": {"dealrec_core"},
    "dealrec": {"dealrec_core", "surrogates", "finetune"},
}


def imported_packages(path: Path) -> dict[str, int]:
    """Top-level project packages that ``path`` imports, each with the first line that does."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in PACKAGES:
                found.setdefault(top, node.lineno)
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_a_package_imports_only_the_layers_below_it(package):
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for top, line in imported_packages(path).items():
            if top != package and top not in ALLOWED[package]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {top}")
    assert not bad, "\n".join(bad)


def test_the_allowed_graph_has_no_cycle():
    seen, stack = set(), set()

    def visit(p):
        assert p not in stack, f"cycle through {p}"
        if p in seen:
            return
        stack.add(p)
        for q in ALLOWED[p]:
            visit(q)
        stack.discard(p)
        seen.add(p)

    for p in PACKAGES:
        visit(p)


def test_the_ground_floor_imports_without_the_models_or_the_engine():
    """Importing a model package loads neither the engine nor the other model package."""
    import subprocess
    import sys

    code = ("import sys, surrogates.sasrec, finetune.tiger, dealrec_core.data, dealrec_core.evaluate; "
            "print(sorted(m for m in sys.modules if m == 'dealrec' or m.startswith('dealrec.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout

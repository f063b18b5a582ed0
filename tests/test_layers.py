"""The packages import in one direction only (docs/design.md, "Layers"):

    dealrec_core  <-  surrogates, finetune  <-  dealrec

Every import statement counts, function-local ones included: a cycle hidden in a function is
still a cycle (it only fails later, at the first call). Below: a function-local import must buy
something (a heavy module, or a fast --help kept lean), and no two modules import each other."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
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
    code = ("import sys, surrogates.sasrec, finetune.tiger, dealrec_core.data, dealrec_core.evaluate; "
            "print(sorted(m for m in sys.modules if m == 'dealrec' or m.startswith('dealrec.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout


# ----------------------------------------------------------------------------- function-local imports
#
# An import inside a function is for a heavy module (one that loads one of HEAVY), so that a module
# which is imported for `dealrec select --help` or by a light module does not pay for torch; and for
# a light module only where importing it at the top would load a module that one of the fast --help
# commands (FAST_HELP) does not load today. Every other import is at the top of its module.

HEAVY = ("torch", "ray", "transformers", "matplotlib", "peft", "safetensors", "tokenizers")
FAST_HELP = (("select", "--help"), ("compare", "--help"))

# Runs every import statement given in one fresh interpreter, each stopped at the first heavy package
# it asks for (a finder placed first raises before that package loads; what a statement loaded before
# is light and may stay), so one process weighs them all in a second or two. Prints {statement: the
# heavy package it asked for, or ""}.
_WEIGHT_PROBE = r"""
import json, sys
HEAVY = set(json.loads(sys.argv[1]))
class Heavy(BaseException):   # not an ImportError: no `except ImportError` hides it
    pass
class StopAtHeavy:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            raise Heavy(name.split(".")[0])
        return None
sys.meta_path.insert(0, StopAtHeavy())
out = {}
for statement in json.loads(sys.argv[2]):
    try:
        exec(statement, {})
        out[statement] = ""
    except Heavy as e:
        out[statement] = str(e)
print(json.dumps(out))
"""

# The modules a --help loads; the probe itself imports nothing the interpreter has not loaded at start.
_HELP_PROBE = r"""
import os, sys
from dealrec.cli import main
sys.stdout = open(os.devnull, "w")
main(sys.argv[1:], prog_name="dealrec", standalone_mode=False)
print(sorted(sys.modules), file=sys.__stdout__)
"""


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def function_local_imports() -> list[tuple[Path, int, str, str]]:
    """(file, line, function, statement) of every import inside a function of the four packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for fn in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for node in ast.walk(fn):
                    if isinstance(node, ast.Import):
                        statements = [f"import {a.name}" for a in node.names]
                    elif isinstance(node, ast.ImportFrom) and node.level == 0:
                        statements = [f"from {node.module} import {', '.join(a.name for a in node.names)}"]
                    else:
                        continue
                    for s in statements:   # a nested function's import is met twice: keep the innermost
                        found[(path, node.lineno, s)] = fn.name
    return [(path, line, fn, s) for (path, line, s), fn in found.items()]


def _run(code: str, *args: str) -> str:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


def test_a_function_local_import_buys_something():
    """A light module is imported at the top, unless that would load something into a fast --help."""
    local = function_local_imports()
    weights = json.loads(_run(_WEIGHT_PROBE, json.dumps(HEAVY), json.dumps(sorted({s for *_, s in local}))))
    helps = {" ".join(args): set(ast.literal_eval(_run(_HELP_PROBE, *args))) for args in FAST_HELP}
    bad = []
    for path, line, fn, statement in sorted(local):
        if weights[statement]:
            continue
        module = statement.split()[1]
        keeps_help_lean = [h for h, loaded in helps.items() if _module_name(path) in loaded and module not in loaded]
        if not keeps_help_lean:
            bad.append(f"{path.relative_to(ROOT)}:{line} in {fn}(): '{statement}' loads nothing heavy and keeps "
                       f"no fast --help from loading it: import it at the top of the module")
    assert not bad, "\n".join(bad)


def test_the_weight_probe_sees_heavy_and_light_modules():
    """The probe's verdicts on known modules (so a broken probe cannot pass every import as heavy)."""
    statements = ["import json", "import pyarrow.parquet", "from dealrec_core.data import PreparedData",
                  "import torch", "from safetensors.numpy import load_file", "from dealrec.score import run_score",
                  "import dealrec.select"]
    weights = json.loads(_run(_WEIGHT_PROBE, json.dumps(HEAVY), json.dumps(statements)))
    assert weights == {"import json": "", "import pyarrow.parquet": "", "from dealrec_core.data import PreparedData": "",
                       "import torch": "torch", "from safetensors.numpy import load_file": "safetensors",
                       "from dealrec.score import run_score": "torch", "import dealrec.select": ""}


def test_no_import_cycle_between_modules():
    """No module imports one that imports it back (function-local imports included): the layering made
    the old cycle-dodging local imports unnecessary, and a hoist must not bring a cycle back."""
    modules = {_module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                subs = {f"{node.module}.{a.name}" for a in node.names} & modules.keys()
                deps |= subs | ({node.module} if len(subs) < len(node.names) else set())
        graph[name] = {d for d in deps & modules.keys() if d != name}
    cycles, state = [], {}

    def visit(m, stack):
        if state.get(m) == 1:
            cycles.append(" -> ".join(stack[stack.index(m):] + [m]))
        elif m not in state:
            state[m] = 1
            for d in sorted(graph[m]):
                visit(d, stack + [m])
            state[m] = 2

    for m in sorted(graph):
        visit(m, [])
    assert not cycles, "\n".join(cycles)

"""Imports: no import cycle inside flashtalk_live counting every import statement (module level, inside functions,
under TYPE_CHECKING), `settings` a leaf, every import inside a function says why it is lazy, and every module imports
on its own in a fresh interpreter (in two orders)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "flashtalk_live"


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted(PKG.rglob("*.py")):
        parts = list(f.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = f
    return out


def _resolve(mod: str, node: ast.ImportFrom, is_pkg: bool) -> str:
    if not node.level:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(mod: str, path: Path, known: set[str]) -> set[str]:
    """Modules of the package that `mod` names in any import statement: module body, functions, TYPE_CHECKING."""
    deps: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            deps.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(mod, node, path.name == "__init__.py")
            deps.add(base)
            deps.update(f"{base}.{a.name}" for a in node.names)
    # importing a.b.c runs a/__init__ and a/b/__init__ first
    full = set()
    for d in deps:
        parts = d.split(".")
        full.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {d for d in full if d in known and d != mod}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph = {m: _imports(m, p, set(mods)) for m, p in mods.items()}
    # a package's __init__ importing its own submodules is how packages re-export: not a cycle to report
    for m in graph:
        graph[m] = {d for d in graph[m] if not (PKG.joinpath(*m.split(".")[1:], "__init__.py").is_file()
                                                 and d.startswith(m + "."))}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            strong(v)
    return out


def test_no_import_cycles():
    assert _cycles(_graph()) == []


# The leaves every part may import; settings may import only these (and the package root).
LEAVES = {"flashtalk_live", "flashtalk_live.errors", "flashtalk_live.secrets"}
SETTINGS = "flashtalk_live.settings"  # a package: the leaf is the package, each of its modules held to the rule


def test_leaves_and_settings_import_nothing_above_the_leaves():
    graph = _graph()
    for leaf in LEAVES - {"flashtalk_live"}:
        assert graph[leaf] <= LEAVES, f"{leaf} is a leaf but imports {sorted(graph[leaf] - LEAVES)}"
    package = {m for m in graph if m == SETTINGS or m.startswith(SETTINGS + ".")}
    for mod in sorted(package):
        assert graph[mod] <= LEAVES | package, f"{mod} imports {sorted(graph[mod] - LEAVES - package)}"


def test_every_lazy_import_says_why():
    missing = []
    for mod, path in _modules().items():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for sub in ast.walk(node):
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    own, above = lines[sub.lineno - 1], lines[sub.lineno - 2].strip()
                    # the reason: a comment on the import, or on the line or lines of comments just above it
                    j = sub.lineno - 2
                    while j >= 0 and (lines[j].strip().startswith(("from ", "import ", ")")) or not lines[j].strip()
                                      or lines[j].startswith("    ") and lines[j].strip().endswith(",")):
                        j -= 1  # one comment may cover a block of imports (blank lines and wrapped names included)
                    if "#" not in own and not lines[j].strip().startswith("#") and not above.startswith("#"):
                        missing.append(f"{path.relative_to(PKG.parent)}:{sub.lineno}: {own.strip()}")
    assert missing == [], "imports inside functions need a one-line reason comment:\n" + "\n".join(missing)


@pytest.mark.timeout(600)
def test_each_package_imports_first_in_a_fresh_interpreter():
    """Import every module, packages in forward and in reverse order, each order in one fresh interpreter; a cycle
    hidden behind an order shows up as an ImportError in one of them."""
    names = sorted(m for m in _modules() if not m.endswith("__main__"))
    for order in (names, names[::-1]):
        code = "import importlib\nfor m in %r:\n    importlib.import_module(m)\n" % order
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]


def test_a_one_gpu_flashtalk_room_imports_torch_only_in_the_render_thread(tmp_path):
    """Everything a one-GPU flashtalk room runs before the still renderer is on air (config load with its kind's
    checks, preflight's needs, the launch step, the daemon's modules) leaves torch unimported: its import (seconds
    on a GPU box) belongs to the render thread's build, not to the time to first frame."""
    code = f"""
import sys
from flashtalk_live.config import load_settings
from flashtalk_live.renderers.kinds import renderer_kind
from flashtalk_live.settings import BENCHMARK_ENV
import flashtalk_live.daemon, flashtalk_live.preflight
s = load_settings(None, ['renderer.kind="flashtalk"', 'model.random_weights="tiny"', 'state_dir="{tmp_path}"'],
                  environ={{BENCHMARK_ENV: "1"}})
kind = renderer_kind("flashtalk")
kind.check(s)
kind.needs(s)
assert kind.launch(s) is None
assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("flashtalk_live"))
s8 = load_settings(None, ['renderer.kind="flashtalk"', 'model.gpus=2', 'model.random_weights="tiny"',
                          'state_dir="{tmp_path}"'], environ={{BENCHMARK_ENV: "1"}})
from flashtalk_live.renderers.kinds import _single_gpu_room
assert not _single_gpu_room(s8)  # several GPUs: the launch step starts ranks (and imports torch)
"""
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("WORLD_SIZE", "RANK")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-3000:]


# ------------------------------------------------------------------------------------------ tests and benchmarks

ROOT = PKG.parent
SYS_PATH_LINE = 'sys.path[:0] = [str(ROOT), str(ROOT / "tests")]'


def _local_names() -> set[str]:
    """Names a test could import a helper by other than `support`: every module file and folder under tests/."""
    tests = ROOT / "tests"
    modules = {p.stem for p in tests.rglob("*.py") if p.stem != "conftest"}
    return (modules | {p.name for p in tests.iterdir() if p.is_dir()}) - {"support"}


def _is_sys_path(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name) \
        and node.value.id == "sys"


def _edits_sys_path(node: ast.AST) -> bool:
    """A call of sys.path's insert, append or extend, or an assignment to sys.path or a slice of it."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return node.func.attr in ("insert", "append", "extend") and _is_sys_path(node.func.value)
    if isinstance(node, (ast.Assign, ast.AugAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return any(_is_sys_path(t.value if isinstance(t, ast.Subscript) else t) for t in targets)
    return False


def test_tests_import_shared_helpers_one_way():
    """Helpers come from `support.*` (pyproject's pytest `pythonpath`): no sys.path edits, no imports of another test
    module or of a helper beside the test, no relative imports."""
    local, bad = _local_names(), []
    for f in sorted((ROOT / "tests").rglob("*.py")):
        text = f.read_text()
        where = f.relative_to(ROOT)
        for node in ast.walk(ast.parse(text)):
            if _edits_sys_path(node):
                bad.append(f"{where}:{node.lineno}: edits sys.path")
            if isinstance(node, ast.ImportFrom) and node.level:
                bad.append(f"{where}:{node.lineno}: relative import")
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad += [f"{where}:{node.lineno}: imports {n}" for n in names if n.split(".")[0] in local]
    assert not bad, "\n".join(bad)


def test_benchmarks_set_sys_path_in_one_line_written_one_way():
    """A benchmark runs as a script: at most one line puts this checkout and tests/ (support) on sys.path."""
    bad = []
    for f in sorted((ROOT / "benchmarks").glob("*.py")):
        lines = [ln.strip() for ln in f.read_text().splitlines() if "sys.path" in ln and not ln.strip().startswith("#")]
        lines = [ln for ln in lines if not ln.startswith(("extra_sys_path", '"""'))]
        if len(lines) > 1 or any(not ln.startswith(SYS_PATH_LINE) for ln in lines):
            bad.append(f"{f.name}: {lines}")
    assert not bad, "\n".join(bad)


def test_run_parses_its_command_line_without_the_other_verbs_modules():
    """`flashtalk-live run` builds its parser without the client, the spool's salvage and the other verbs' modules:
    their imports came before the room's first frame. Other verbs (the control: `push`) and the top level's help
    still list them all."""
    verbs = ("flashtalk_live.client", "flashtalk_live.queue.salvage", "flashtalk_live.ingest.cli")
    code = ("import sys\nfrom flashtalk_live.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n"
            "    pass\nprint(sorted(m for m in %r if m in sys.modules))\n" % (verbs,))
    for argv, imported in ((["run", "--help"], []), (["--debug", "run", "--help"], []), (["push", "--help"], verbs),
                           (["--help"], verbs)):
        r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout.strip().splitlines()[-1] == repr(sorted(imported)), argv

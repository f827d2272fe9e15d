"""Measure the structure of the mmsearch package: import graph, private imports, modality branches, size.

    python scripts/house_report.py [--root PATH_TO_REPO] [--json OUT.json] [--package mmsearch]

Reads the source files under <root>/<package>/ (or <root>/src/<package>/) with `ast`; nothing is
imported, so it runs on any checkout and any layout of modules. Standard library only.

What is counted (the report repeats this in its header):

1. Import graph of the package's own modules. A node is a module file (`pkg/__init__.py` is the
   node `pkg`). `import a.b.c` gives the edge to a.b.c; `from a.b import c` gives the edge to a.b.c
   when that is a module, else to a.b (as grimp does). Relative imports are resolved. Importing
   a.b.c also runs a/__init__ and a/b/__init__, which is not counted as an edge. Dynamic imports
   (importlib, __getattr__) are not seen.
   - module-level edges: imports that run when the module is imported (anywhere outside a def,
     class bodies included), except those under `if TYPE_CHECKING:`, which are counted apart.
   - function-level edges: imports inside a def (any depth).
   - cycles: strongly connected components of more than one module in the module-level graph
     (and, apart, in the graph of module-level + function-level edges).
   - layers: each cycle is collapsed into one node; a node's layer is the length of the longest
     import path below it (layer 0 imports no own module). Every edge between different
     components goes down by construction, so the "back-arrows" reported are: the edges inside
     cycles (module-level), and the function-level edges that point to a module that imports the
     importer, directly or not, at module level (imports put in a def to dodge a cycle);
     and apart, the function-level edges whose target sits in a higher layer than the importer.
2. Private names imported across modules: `from <own module> import _name` (single leading
   underscore, not dunder; `_name` a function, class, constant or a private submodule), and
   `mod._name` where `mod` is a name bound in that file to an own module by an import.
3. Function-level imports of own modules: import statements inside a def, by file.
4. Modality branches outside <package>/media/: comparisons (==, !=, in, not in, is, is not) one
   side of which is a name, attribute chain or string-keyed subscript whose text contains
   "modality" (any case), e.g. `row.modality == "video"`, `kind is Modality.VIDEO`,
   `r["modality"] in (...)`, when another side is a value that does not mention a modality and
   is not None (so `Item.modality == modality` and `modality is not None` are not counted); one
   count per comparison (two on a line count two). And string literals exactly "video" outside
   <package>/media/.
5. Largest classes and functions (lines from the def/class line to the last line of its body),
   top 10 each; `class Engine` and the classes of the package it inherits from, recursively.
6. Signatures that list the search parameters: defs with at least 4 parameters named in
   SEARCH_PARAMS.
7. Lines of the package (all lines; code lines = not blank, not only a comment) and the number
   of top-level modules and packages in <package>/.
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import sys
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

SEARCH_PARAMS = frozenset({
    "k", "type", "min_score", "under", "dedup", "after", "before", "camera", "near", "sort",
    "fusion", "mode", "image_weight", "text_weight", "calibrated", "cutoff",
})
SEARCH_PARAMS_MIN = 4
TOP_N = 10


# ---------------------------------------------------------------------------------------------
# Reading the package


@dataclass
class Module:
    name: str            # dotted module name, e.g. "mmsearch.media.image"
    path: Path           # absolute path of the file
    rel: str             # path relative to the root, with forward slashes
    is_package: bool     # an __init__.py
    source: str
    tree: ast.Module


def find_package(root: Path, package: str) -> Path:
    for candidate in (root / package, root / "src" / package):
        if candidate.is_dir():
            return candidate
    raise SystemExit(f"no package {package!r} under {root} (nor under {root / 'src'})")


def load_modules(root: Path, package: str) -> dict[str, Module]:
    pkg_dir = find_package(root, package)
    base = pkg_dir.parent
    modules: dict[str, Module] = {}
    for path in sorted(pkg_dir.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = list(path.relative_to(base).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        if not all(p.isidentifier() for p in parts):
            continue
        source = path.read_text(encoding="utf-8", errors="replace")
        try:
            tree = ast.parse(source, filename=str(path))
        except SyntaxError as exc:
            print(f"warning: {path}: {exc}", file=sys.stderr)
            continue
        name = ".".join(parts)
        modules[name] = Module(name, path, path.relative_to(root).as_posix(), is_package, source, tree)
    return modules


# ---------------------------------------------------------------------------------------------
# Imports


@dataclass
class ImportRecord:
    module: str           # importer
    line: int
    target: str           # imported own module (graph node)
    context: str          # "module", "function" or "type_checking"
    statement: str        # the import as written (shortened)
    names: list[str] = field(default_factory=list)   # for `from X import a, b`: a, b


def _is_type_checking_test(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk_with_context(tree: ast.AST):
    """Yield (node, context) for every node; context is 'function' inside a def or lambda,
    'type_checking' under `if TYPE_CHECKING:` (outside a def), else 'module'."""
    stack: list[tuple[ast.AST, str]] = [(tree, "module")]
    while stack:
        node, ctx = stack.pop()
        yield node, ctx
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            child_ctx = "function"
            # decorators, defaults and annotations run at definition time
            outer = []
            if not isinstance(node, ast.Lambda):
                outer += node.decorator_list
                if node.returns is not None:
                    outer.append(node.returns)
            outer += node.args.defaults + [d for d in node.args.kw_defaults if d is not None]
            for child in outer:
                stack.append((child, ctx))
            body = node.body if isinstance(node.body, list) else [node.body]
            for child in body:
                stack.append((child, child_ctx))
            continue
        if isinstance(node, ast.If) and ctx == "module" and _is_type_checking_test(node.test):
            for child in node.body:
                stack.append((child, "type_checking"))
            for child in node.orelse:
                stack.append((child, ctx))
            continue
        for child in ast.iter_child_nodes(node):
            stack.append((child, ctx))


def _resolve_relative(mod: Module, level: int, name: str | None) -> str | None:
    if level == 0:
        return name
    package_parts = mod.name.split(".") if mod.is_package else mod.name.split(".")[:-1]
    if level - 1 > len(package_parts):
        return None
    base_parts = package_parts[: len(package_parts) - (level - 1)]
    if name:
        base_parts = base_parts + name.split(".")
    return ".".join(base_parts) if base_parts else None


def _own_module_for(dotted: str, modules: dict[str, Module]) -> str | None:
    """The longest prefix of `dotted` that is an own module."""
    parts = dotted.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def collect_imports(modules: dict[str, Module]) -> list[ImportRecord]:
    records: list[ImportRecord] = []
    for mod in modules.values():
        for node, ctx in _walk_with_context(mod.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    target = _own_module_for(alias.name, modules)
                    if target is not None:
                        records.append(ImportRecord(mod.name, node.lineno, target, ctx,
                                                    f"import {alias.name}"))
            elif isinstance(node, ast.ImportFrom):
                base = _resolve_relative(mod, node.level, node.module)
                if base is None:
                    continue
                written = "." * node.level + (node.module or "")
                by_target: dict[str, list[str]] = {}
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    if sub in modules:
                        by_target.setdefault(sub, []).append(alias.name)
                    else:
                        target = _own_module_for(base, modules)
                        if target is not None:
                            by_target.setdefault(target, []).append(alias.name)
                for target, names in by_target.items():
                    records.append(ImportRecord(mod.name, node.lineno, target, ctx,
                                                f"from {written} import {', '.join(names)}", names))
    records.sort(key=lambda r: (r.module, r.line, r.target))
    return records


def edges_of(records: list[ImportRecord], contexts: set[str]) -> set[tuple[str, str]]:
    return {(r.module, r.target) for r in records if r.context in contexts and r.module != r.target}


def strongly_connected(nodes: list[str], edges: set[tuple[str, str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative. Components in reverse topological order."""
    succ: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in sorted(edges):
        succ.setdefault(a, []).append(b)
        succ.setdefault(b, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in sorted(succ):
        if start in index:
            continue
        work = [(start, iter(succ[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(succ[child])))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def layers_of(nodes: list[str], edges: set[tuple[str, str]]) -> tuple[dict[str, int], list[list[str]]]:
    """Layer of each module: the longest path below its component in the DAG of components."""
    components = strongly_connected(nodes, edges)   # reverse topological: sinks first
    comp_of = {m: i for i, comp in enumerate(components) for m in comp}
    below: dict[int, set[int]] = {i: set() for i in range(len(components))}
    for a, b in edges:
        if comp_of[a] != comp_of[b]:
            below[comp_of[a]].add(comp_of[b])
    layer_of_comp: dict[int, int] = {}
    for i in range(len(components)):   # every successor of i comes earlier in this order
        layer_of_comp[i] = 1 + max((layer_of_comp[j] for j in below[i]), default=-1)
    return {m: layer_of_comp[comp_of[m]] for m in comp_of}, components


def reachable(start: str, edges: set[tuple[str, str]]) -> set[str]:
    succ: dict[str, set[str]] = {}
    for a, b in edges:
        succ.setdefault(a, set()).add(b)
    seen = {start}
    todo = [start]
    while todo:
        for nxt in succ.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def graph_report(modules: dict[str, Module], records: list[ImportRecord]) -> dict:
    nodes = sorted(modules)
    module_edges = edges_of(records, {"module"})
    function_edges = edges_of(records, {"function"})
    type_checking_edges = edges_of(records, {"type_checking"})
    all_runtime_edges = module_edges | function_edges
    layer, components = layers_of(nodes, module_edges)
    cycles = sorted((c for c in components if len(c) > 1), key=lambda c: (-len(c), c))
    in_cycle = {m: i for i, c in enumerate(cycles) for m in c}
    edges_in_cycles = sorted((a, b) for a, b in module_edges
                             if a in in_cycle and in_cycle[a] == in_cycle.get(b))
    all_cycles = sorted((c for c in strongly_connected(nodes, all_runtime_edges) if len(c) > 1),
                        key=lambda c: (-len(c), c))
    in_all_cycle = {m: i for i, c in enumerate(all_cycles) for m in c}
    function_edges_in_cycles = sorted(
        (a, b) for a, b in function_edges - module_edges
        if a in in_all_cycle and in_all_cycle[a] == in_all_cycle.get(b))
    reach_cache: dict[str, set[str]] = {}
    hidden = []
    for a, b in sorted(function_edges - module_edges):
        if b not in reach_cache:
            reach_cache[b] = reachable(b, module_edges)
        if a in reach_cache[b]:
            hidden.append((a, b))
    upward_function_edges = sorted((a, b) for a, b in function_edges - module_edges
                                   if layer[b] > layer[a])
    return {
        "modules": len(nodes),
        "module_level_edges": len(module_edges),
        "function_level_edges": len(function_edges),
        "function_level_only_edges": len(function_edges - module_edges),
        "type_checking_edges": len(type_checking_edges),
        "cycles": cycles,
        "cycle_count": len(cycles),
        "modules_in_cycles": sum(len(c) for c in cycles),
        "edges_in_cycles": [list(e) for e in edges_in_cycles],
        "cycles_with_function_level": all_cycles,
        "cycle_count_with_function_level": len(all_cycles),
        "modules_in_cycles_with_function_level": sum(len(c) for c in all_cycles),
        "function_edges_in_cycles": [list(e) for e in function_edges_in_cycles],
        "function_edges_closing_a_cycle": [list(e) for e in hidden],
        "function_edges_upward": [list(e) for e in upward_function_edges],
        "layers": max(layer.values(), default=-1) + 1,
        "layer_of": dict(sorted(layer.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


# ---------------------------------------------------------------------------------------------
# Private names across modules, function-level imports


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_imports(modules: dict[str, Module], records: list[ImportRecord]) -> list[dict]:
    found = []
    for r in records:
        for name in r.names:
            if _is_private(name) and r.module != r.target:
                kind = "module" if r.target.endswith("." + name) else "name"
                found.append({"file": modules[r.module].rel, "line": r.line, "importer": r.module,
                              "from": r.target if kind == "name" else r.target.rsplit(".", 1)[0],
                              "name": name, "kind": kind, "context": r.context})
    # `mod._name` where `mod` is bound to an own module in that file
    for mod in modules.values():
        bound: dict[str, str] = {}
        for node in ast.walk(mod.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    target = alias.name if alias.name in modules else None
                    if target is None:
                        continue
                    if alias.asname:
                        bound[alias.asname] = target
                    # `import a.b` binds `a`; `a.b._x` is handled through the attribute chain
                    else:
                        bound[alias.name.split(".")[0]] = alias.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve_relative(mod, node.level, node.module)
                if base is None:
                    continue
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    if sub in modules:
                        bound[alias.asname or alias.name] = sub
        if not bound:
            continue
        for node in ast.walk(mod.tree):
            if isinstance(node, ast.Attribute) and _is_private(node.attr):
                chain = _dotted(node.value)
                if chain is None:
                    continue
                head, _, rest = chain.partition(".")
                if head not in bound:
                    continue
                target = bound[head] + ("." + rest if rest else "")
                if target in modules and target != mod.name:
                    found.append({"file": mod.rel, "line": node.lineno, "importer": mod.name,
                                  "from": target, "name": node.attr, "kind": "attribute",
                                  "context": "-"})
    found.sort(key=lambda f: (f["file"], f["line"], f["name"]))
    return found


def function_level_imports(modules: dict[str, Module], records: list[ImportRecord]) -> dict[str, list[dict]]:
    by_file: dict[str, list[dict]] = {}
    for r in records:
        if r.context == "function":
            by_file.setdefault(modules[r.module].rel, []).append(
                {"line": r.line, "target": r.target, "statement": r.statement})
    return dict(sorted(by_file.items(), key=lambda kv: (-len(kv[1]), kv[0])))


# ---------------------------------------------------------------------------------------------
# Modality branches


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner is not None else f"?.{node.attr}"
    return None


def _side_text(node: ast.AST) -> str | None:
    dotted = _dotted(node)
    if dotted is not None:
        return dotted
    if isinstance(node, ast.Subscript):
        key = node.slice
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            inner = _dotted(node.value) or "?"
            return f"{inner}[{key.value!r}]"
    return None


_BRANCH_OPS = (ast.Eq, ast.NotEq, ast.In, ast.NotIn, ast.Is, ast.IsNot)


def _mentions_modality(node: ast.AST) -> bool:
    return "modality" in ast.unparse(node).lower()


def _is_modality_branch(sides: list[ast.expr]) -> bool:
    """One side names a modality (name/attribute/subscript), another side is a value that does
    not: `row.modality == "video"`, `kind is Modality.VIDEO`, `m.modality in side`. Generic
    comparisons (`Item.modality == modality`, `modality is not None`) are not branches."""
    named = [s for s in sides if (t := _side_text(s)) is not None and "modality" in t.lower()]
    others = [s for s in sides if not _mentions_modality(s)
              and not (isinstance(s, ast.Constant) and s.value is None)]
    return bool(named) and bool(others)


def _in_media(rel: str, package_rel: str) -> bool:
    return rel.startswith(f"{package_rel}/media/")


def modality_branches(modules: dict[str, Module], package_rel: str) -> tuple[list[dict], list[dict]]:
    branches, videos = [], []
    for mod in modules.values():
        if _in_media(mod.rel, package_rel):
            continue
        lines = mod.source.splitlines()
        for node in ast.walk(mod.tree):
            if isinstance(node, ast.Compare) and any(isinstance(op, _BRANCH_OPS) for op in node.ops):
                if _is_modality_branch([node.left, *node.comparators]):
                    text = lines[node.lineno - 1].strip() if node.lineno <= len(lines) else ""
                    branches.append({"file": mod.rel, "line": node.lineno, "code": text[:120]})
            elif isinstance(node, ast.Constant) and node.value == "video" and isinstance(node.value, str):
                text = lines[node.lineno - 1].strip() if node.lineno <= len(lines) else ""
                videos.append({"file": mod.rel, "line": node.lineno, "code": text[:120]})
    key = lambda f: (f["file"], f["line"])  # noqa: E731
    return sorted(branches, key=key), sorted(videos, key=key)


# ---------------------------------------------------------------------------------------------
# Sizes


def _span(node: ast.AST) -> int:
    return node.end_lineno - node.lineno + 1


def definitions(modules: dict[str, Module]) -> tuple[list[dict], list[dict]]:
    classes, functions = [], []
    for mod in modules.values():
        def visit(node: ast.AST, prefix: str) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.ClassDef):
                    qual = f"{prefix}{child.name}"
                    classes.append({"name": qual, "module": mod.name, "file": mod.rel,
                                    "line": child.lineno, "lines": _span(child), "node": child})
                    visit(child, qual + ".")
                elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    qual = f"{prefix}{child.name}"
                    functions.append({"name": qual, "module": mod.name, "file": mod.rel,
                                      "line": child.lineno, "lines": _span(child), "node": child})
                    visit(child, qual + ".<locals>.")
                else:
                    visit(child, prefix)
        visit(mod.tree, "")
    return classes, functions


def _public(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k != "node"}


def engine_report(modules: dict[str, Module], classes: list[dict], class_name: str = "Engine") -> dict | None:
    """`class Engine` and the classes of the package it inherits from (recursively)."""
    by_module = {(c["module"], c["name"]): c for c in classes}

    def resolve(mod_name: str, base: ast.expr) -> dict | None:
        dotted = _dotted(base)
        if dotted is None:
            return None
        head, _, rest = dotted.partition(".")
        mod = modules[mod_name]
        if not rest and (mod_name, head) in by_module:
            return by_module[(mod_name, head)]
        for node in ast.walk(mod.tree):       # follow `from X import Head` / `import X as head`
            if isinstance(node, ast.ImportFrom):
                src = _resolve_relative(mod, node.level, node.module)
                for alias in node.names:
                    if (alias.asname or alias.name) != head or src is None:
                        continue
                    if f"{src}.{alias.name}" in modules and rest:
                        return _lookup(f"{src}.{alias.name}", rest)
                    if src in modules:
                        return _lookup(src, alias.name if not rest else f"{alias.name}.{rest}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname == head and alias.name in modules and rest:
                        return _lookup(alias.name, rest)
        return None

    def _lookup(mod_name: str, name: str, depth: int = 0) -> dict | None:
        if (mod_name, name) in by_module:
            return by_module[(mod_name, name)]
        if depth > 5 or "." in name:
            return None
        # re-exported: follow the module's own imports of that name
        fake = ast.Name(id=name)
        mod = modules[mod_name]
        for node in ast.walk(mod.tree):
            if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
                return resolve(mod_name, fake)
        return None

    engines = [c for c in classes if c["name"] == class_name]
    if not engines:
        return None
    engine = max(engines, key=lambda c: c["lines"])
    chain, seen, todo = [], set(), [engine]
    while todo:
        cls = todo.pop(0)
        key = (cls["module"], cls["name"])
        if key in seen:
            continue
        seen.add(key)
        chain.append(cls)
        for base in cls["node"].bases:
            found = resolve(cls["module"], base)
            if found is not None:
                todo.append(found)
    return {
        "class": _public(engine),
        "bases_in_package": [_public(c) for c in chain[1:]],
        "total_lines": sum(c["lines"] for c in chain),
    }


def search_signatures(functions: list[dict]) -> list[dict]:
    found = []
    for f in functions:
        args = f["node"].args
        params = {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
        hits = sorted(params & SEARCH_PARAMS)
        if len(hits) >= SEARCH_PARAMS_MIN:
            found.append({"name": f["name"], "file": f["file"], "line": f["line"],
                          "params": hits, "count": len(hits)})
    return sorted(found, key=lambda f: (f["file"], f["line"]))


def line_counts(modules: dict[str, Module]) -> dict:
    total = code = 0
    for mod in modules.values():
        total += len(mod.source.splitlines())
        comment_or_blank = set()
        lines = mod.source.splitlines()
        for i, line in enumerate(lines, 1):
            if not line.strip():
                comment_or_blank.add(i)
        try:
            for tok in tokenize.generate_tokens(io.StringIO(mod.source).readline):
                if tok.type == tokenize.COMMENT and lines[tok.start[0] - 1].strip().startswith("#"):
                    comment_or_blank.add(tok.start[0])
        except (tokenize.TokenError, IndentationError):
            pass
        code += len(lines) - len(comment_or_blank)
    return {"lines": total, "code_lines": code, "files": len(modules)}


def top_level(pkg_dir: Path) -> dict:
    modules_, packages = [], []
    for entry in sorted(pkg_dir.iterdir()):
        if entry.is_file() and entry.suffix == ".py" and entry.name != "__init__.py":
            modules_.append(entry.stem)
        elif entry.is_dir() and (entry / "__init__.py").is_file():
            packages.append(entry.name)
    return {"modules": modules_, "packages": packages, "count": len(modules_) + len(packages)}


# ---------------------------------------------------------------------------------------------
# The report


def measure(root: Path, package: str = "mmsearch") -> dict:
    root = root.resolve()
    pkg_dir = find_package(root, package)
    package_rel = pkg_dir.relative_to(root).as_posix()
    modules = load_modules(root, package)
    records = collect_imports(modules)
    classes, functions = definitions(modules)
    branches, videos = modality_branches(modules, package_rel)
    private = private_imports(modules, records)
    fl_imports = function_level_imports(modules, records)
    graph = graph_report(modules, records)
    engine = engine_report(modules, classes)
    signatures = search_signatures(functions)
    return {
        "root": str(root),
        "package": package,
        "graph": graph,
        "private_imports": private,
        "function_level_imports": fl_imports,
        "function_level_import_count": sum(len(v) for v in fl_imports.values()),
        "modality_branches": branches,
        "video_literals": videos,
        "largest_classes": [_public(c) for c in sorted(classes, key=lambda c: -c["lines"])[:TOP_N]],
        "largest_functions": [_public(f) for f in sorted(functions, key=lambda f: -f["lines"])[:TOP_N]],
        "engine": engine,
        "search_signatures": signatures,
        "size": {**line_counts(modules), "top_level": top_level(pkg_dir)},
    }


def summary(report: dict) -> dict:
    g = report["graph"]
    engine = report["engine"]
    return {
        "modules": g["modules"],
        "module-level edges": g["module_level_edges"],
        "function-level edges (distinct pairs)": g["function_level_edges"],
        "TYPE_CHECKING edges": g["type_checking_edges"],
        "cycles (module-level SCCs > 1)": g["cycle_count"],
        "modules in cycles": g["modules_in_cycles"],
        "edges inside cycles": len(g["edges_in_cycles"]),
        "cycles counting function-level imports": g["cycle_count_with_function_level"],
        "modules in those cycles": g["modules_in_cycles_with_function_level"],
        "function-level edges inside those cycles": len(g["function_edges_in_cycles"]),
        "function-level edges closing a cycle alone": len(g["function_edges_closing_a_cycle"]),
        "function-level edges pointing up a layer": len(g["function_edges_upward"]),
        "layers (longest path + 1)": g["layers"],
        "private names imported across modules": len(report["private_imports"]),
        "function-level imports of own modules": report["function_level_import_count"],
        "files with function-level imports": len(report["function_level_imports"]),
        "modality branches outside media/": len(report["modality_branches"]),
        '"video" literals outside media/': len(report["video_literals"]),
        "Engine lines": engine["class"]["lines"] if engine else 0,
        "Engine + in-package bases lines": engine["total_lines"] if engine else 0,
        "search-parameter signatures": len(report["search_signatures"]),
        "package lines": report["size"]["lines"],
        "package code lines": report["size"]["code_lines"],
        "package files": report["size"]["files"],
        "top-level modules + packages": report["size"]["top_level"]["count"],
    }


def render(report: dict) -> str:
    out = io.StringIO()
    w = lambda s="": print(s, file=out)  # noqa: E731
    g = report["graph"]
    pkg = report["package"]
    w(f"House report: package {pkg} under {report['root']}")
    w("(what each count means: see the docstring of scripts/house_report.py)")
    w()
    w("== Counts")
    for key, value in summary(report).items():
        w(f"  {key:<45} {value}")
    w()
    w("== 1. Import graph")
    w("  Nodes are module files; module-level = runs on import (outside defs, not under")
    w("  TYPE_CHECKING); cycles = strongly connected components of > 1 module. Layers: cycles")
    w("  collapsed, layer = longest import path below; every edge between components points")
    w("  down, so the back-arrows listed are the edges inside cycles and the function-level")
    w("  imports whose target imports the importer back at module level.")
    w(f"  cycles (module-level): {g['cycle_count']}")
    for c in g["cycles"]:
        w(f"    [{len(c)}] " + ", ".join(c))
    w(f"  edges inside those cycles: {len(g['edges_in_cycles'])}")
    for a, b in g["edges_in_cycles"]:
        w(f"    {a} -> {b}")
    w(f"  cycles counting function-level imports too: {g['cycle_count_with_function_level']}")
    for c in g["cycles_with_function_level"]:
        w(f"    [{len(c)}] " + ", ".join(c))
    w(f"  function-level edges inside those cycles (the imports put in a def that make them): "
      f"{len(g['function_edges_in_cycles'])}")
    for a, b in g["function_edges_in_cycles"]:
        w(f"    {a} -> {b}")
    w(f"  of which close a cycle alone (target imports importer at module level): "
      f"{len(g['function_edges_closing_a_cycle'])}")
    for a, b in g["function_edges_closing_a_cycle"]:
        w(f"    {a} -> {b}")
    w(f"  function-level edges pointing up (target's layer above the importer's): "
      f"{len(g['function_edges_upward'])}")
    for a, b in g["function_edges_upward"]:
        w(f"    {a} ({g['layer_of'][a]}) -> {b} ({g['layer_of'][b]})")
    w(f"  layers: {g['layers']} (top of the stack first)")
    by_layer: dict[int, list[str]] = {}
    for m, layer in g["layer_of"].items():
        by_layer.setdefault(layer, []).append(m)
    for layer in sorted(by_layer, reverse=True):
        w(f"    {layer:>2}: " + ", ".join(sorted(by_layer[layer])))
    w()
    w(f"== 2. Private names imported across modules: {len(report['private_imports'])}")
    for p in report["private_imports"]:
        where = {"module": ", imported at module level", "function": ", imported in a def",
                 "type_checking": ", under TYPE_CHECKING"}.get(p["context"], "")
        w(f"    {p['file']}:{p['line']}  {p['name']} from {p['from']} ({p['kind']}{where})")
    w()
    w(f"== 3. Function-level imports of own modules: {report['function_level_import_count']} "
      f"in {len(report['function_level_imports'])} files")
    for rel, items in report["function_level_imports"].items():
        w(f"    {rel}: {len(items)}")
        for item in items:
            w(f"      {item['line']}: {item['statement']}")
    w()
    w(f"== 4. Modality branches outside {pkg}/media/: {len(report['modality_branches'])}")
    for b in report["modality_branches"]:
        w(f"    {b['file']}:{b['line']}  {b['code']}")
    w(f'   "video" literals outside {pkg}/media/: {len(report["video_literals"])}')
    for v in report["video_literals"]:
        w(f"    {v['file']}:{v['line']}  {v['code']}")
    w()
    w(f"== 5. Largest classes (top {TOP_N}, lines)")
    for c in report["largest_classes"]:
        w(f"    {c['lines']:>5}  {c['name']}  {c['file']}:{c['line']}")
    w(f"   Largest functions (top {TOP_N}, lines)")
    for f in report["largest_functions"]:
        w(f"    {f['lines']:>5}  {f['name']}  {f['file']}:{f['line']}")
    e = report["engine"]
    if e:
        w(f"   class Engine: {e['class']['lines']} lines ({e['class']['file']}:{e['class']['line']}); "
          f"with its in-package bases: {e['total_lines']}")
        for b in e["bases_in_package"]:
            w(f"    base {b['name']}: {b['lines']} lines ({b['file']}:{b['line']})")
    else:
        w("   class Engine: not found")
    w()
    w(f"== 6. Signatures with >= {SEARCH_PARAMS_MIN} search parameters: {len(report['search_signatures'])}")
    for s in report["search_signatures"]:
        w(f"    {s['file']}:{s['line']}  {s['name']}  ({s['count']}: {', '.join(s['params'])})")
    w()
    size = report["size"]
    w(f"== 7. Size: {size['lines']} lines, {size['code_lines']} code lines in {size['files']} files")
    tl = size["top_level"]
    w(f"   top-level in {pkg}/: {tl['count']} ({len(tl['modules'])} modules, {len(tl['packages'])} packages)")
    w("    modules: " + ", ".join(tl["modules"]))
    w("    packages: " + ", ".join(tl["packages"]))
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="the repository (default: the one this script lives in)")
    parser.add_argument("--package", default="mmsearch")
    parser.add_argument("--json", type=Path, help="also write the full report as JSON here")
    args = parser.parse_args(argv)
    report = measure(args.root, args.package)
    sys.stdout.write(render(report))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary(report), **report}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

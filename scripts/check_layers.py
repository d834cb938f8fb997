#!/usr/bin/env python3
"""check_layers.py: the include graph between the source folders.

Reads every `#include "..."` in model/ and server/, resolves it the way the
compiler does (the including file's folder first, then -Imodel, then
-Iserver), and fails when
  - a file in model/ includes anything from server/ (the encoder library
    stands alone), or
  - two different folders include each other, directly or through others
    (a cycle between folders).
Prints the folder graph. Run by `make check`.

    python3 scripts/check_layers.py [ROOT]
"""
import os
import re
import sys

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def sources(root):
    for top in ("model", "server"):
        for d, _, files in os.walk(os.path.join(root, top)):
            for f in files:
                if f.endswith((".c", ".h", ".cpp")):
                    yield os.path.relpath(os.path.join(d, f), root)


def resolve(root, includer, name):
    for base in (os.path.dirname(includer), "model", "server"):
        if includer.startswith("model/") and base == "server":
            continue
        p = os.path.normpath(os.path.join(base, name))
        if os.path.exists(os.path.join(root, p)):
            return p
    return None


def cycles(graph):
    """Strongly connected components with more than one folder (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "."
    graph, edges, problems = {}, {}, []
    for f in sorted(sources(root)):
        text = open(os.path.join(root, f), encoding="utf-8").read()
        src = os.path.dirname(f)
        graph.setdefault(src, set())
        for name in INCLUDE.findall(text):
            target = resolve(root, f, name)
            if target is None:
                if f.startswith("model/") and os.path.exists(os.path.join(root, "server", name)):
                    problems.append(f"{f} includes server/{name}: model/ must not use server/")
                continue
            dst = os.path.dirname(target)
            if dst != src:
                graph[src].add(dst)
                edges.setdefault((src, dst), f"{f} -> {target}")
    for src in sorted(graph):
        deps = ", ".join(sorted(graph[src])) or "-"
        print(f"{src:16} uses {deps}")
    for comp in cycles(graph):
        detail = "; ".join(edges[(a, b)] for a in comp for b in comp if (a, b) in edges)
        problems.append(f"folders include each other: {' <-> '.join(comp)} ({detail})")
    for p in problems:
        print("check_layers: " + p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

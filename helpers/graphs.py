"""Walking and drawing the autograd graph behind a tensor.

Introduced in the chapter "The dynamic computation graph" (book/dynamic_graph.ipynb).
"""

from __future__ import annotations

import re

import matplotlib.pyplot as plt
import torch


def backward_graph(t: torch.Tensor) -> tuple[list, list[tuple]]:
    """The backward graph that ``t.backward()`` would walk, as ``(nodes, edges)``.

    Nodes are autograd ``Node`` objects (``t.grad_fn`` first, then breadth first through
    ``next_functions``), each listed once even when reached along several paths. An edge
    ``(a, b)`` means the gradient flows from ``a`` to ``b``. A tensor with no ``grad_fn``
    (a leaf, or one computed without gradient tracking) has an empty graph.
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"expected a tensor, got {type(t).__name__}")
    if t.grad_fn is None:
        return [], []
    nodes, edges, seen = [t.grad_fn], [], {t.grad_fn}
    frontier = [t.grad_fn]
    while frontier:
        node = frontier.pop(0)
        for child, _ in node.next_functions:
            if child is None:  # an input that needs no gradient
                continue
            edges.append((node, child))
            if child not in seen:
                seen.add(child)
                nodes.append(child)
                frontier.append(child)
    return nodes, edges


def node_label(node, names: dict[str, torch.Tensor] | None = None) -> str:
    """``MulBackward0``, or for a leaf its name (when given) and shape."""
    if hasattr(node, "variable"):  # AccumulateGrad: where a leaf's .grad is written
        leaf = node.variable
        name = next((n for n, v in (names or {}).items() if v is leaf), "leaf")
        return f"{name}\n{tuple(leaf.shape)}"
    return type(node).__name__


def draw_autograd_graph(t: torch.Tensor, names: dict[str, torch.Tensor] | None = None, ax=None):
    """Draw ``backward_graph(t)`` with matplotlib: the output at the top, each leaf below the
    nodes it feeds (not necessarily on the bottom row).

    Each node sits one row below the deepest node that feeds it a gradient, so that every
    arrow points downwards, in the direction the gradient flows.
    """
    nodes, edges = backward_graph(t)
    if not nodes:
        raise ValueError("this tensor has no autograd graph (grad_fn is None): was it computed "
                         "from a tensor with requires_grad=True, outside torch.no_grad()?")
    depth = {nodes[0]: 0}
    for _ in nodes:  # longest-path depths; the graph is acyclic, so len(nodes) passes suffice
        for parent, child in edges:
            depth[child] = max(depth.get(child, 0), depth[parent] + 1)
    rows: dict[int, list] = {}
    for node in nodes:
        rows.setdefault(depth[node], []).append(node)
    position = {}
    for d, row in rows.items():
        for i, node in enumerate(row):
            position[node] = (i - (len(row) - 1) / 2, -d)

    if ax is None:
        width = max(len(r) for r in rows.values())
        _, ax = plt.subplots(figsize=(max(4.0, 2.4 * width), 1.1 * len(rows) + 0.6))
    for parent, child in edges:
        ax.annotate("", xy=position[child], xytext=position[parent],
                    arrowprops=dict(arrowstyle="->", color="0.4", shrinkA=14, shrinkB=14))
    for node in nodes:
        leaf = hasattr(node, "variable")
        ax.text(*position[node], node_label(node, names), ha="center", va="center", fontsize=9,
                bbox=dict(boxstyle="round", fc="#d8ecd8" if leaf else "#dde6f4", ec="0.5"))
    xs = [p[0] for p in position.values()]
    ax.set_xlim(min(xs) - 0.8, max(xs) + 0.8)
    ax.set_ylim(-max(rows) - 0.6, 0.6)
    ax.axis("off")
    return ax


def graph_code(graph_module: torch.nn.Module) -> str:
    """The Python code of a captured FX graph (``torch.fx``, ``torch.export``, ``torch.compile``),
    without the ``;  x = None`` statements FX adds after each line to free memory early."""
    return re.sub(r";  (\w+ = )+None", "", graph_module.code.strip())

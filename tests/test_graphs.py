import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest
import torch

from helpers.graphs import backward_graph, draw_autograd_graph, node_label


def test_a_shared_input_is_one_node_reached_by_two_edges():
    a = torch.randn(3, requires_grad=True)
    b = torch.randn(3, requires_grad=True)
    y = (a * b + a).sum()
    nodes, edges = backward_graph(y)
    names = [type(n).__name__ for n in nodes]
    assert names == ["SumBackward0", "AddBackward0", "MulBackward0", "AccumulateGrad", "AccumulateGrad"]
    leaf_a = next(n for n in nodes if getattr(n, "variable", None) is a)
    assert sum(1 for _, child in edges if child is leaf_a) == 2
    assert node_label(leaf_a, {"a": a}) == "a\n(3,)"


def test_inputs_without_gradients_are_not_in_the_graph():
    a = torch.randn(2, requires_grad=True)
    constant = torch.randn(2)
    nodes, _ = backward_graph(a * constant)
    assert len(nodes) == 2  # MulBackward0 and a's AccumulateGrad


def test_a_tensor_without_graph_has_an_empty_one_and_cannot_be_drawn():
    assert backward_graph(torch.ones(2)) == ([], [])
    with pytest.raises(ValueError, match="has no autograd graph"):
        draw_autograd_graph(torch.ones(2))
    with pytest.raises(TypeError, match="expected a tensor, got list"):
        backward_graph([1.0])


def test_drawing_puts_one_label_per_node():
    a = torch.randn(3, requires_grad=True)
    y = (a.exp() * a).sum()
    ax = draw_autograd_graph(y, names={"a": a})
    assert sorted(t.get_text() for t in ax.texts if t.get_text()) == sorted(
        ["SumBackward0", "MulBackward0", "ExpBackward0", "a\n(3,)"])
    plt.close("all")


def test_graph_code_drops_only_the_statements_that_free_memory():
    import torch.fx

    from helpers.graphs import graph_code

    def straight_line(v):
        return (v * 2).relu().sum()

    traced = torch.fx.symbolic_trace(straight_line)
    assert "= None" in traced.code  # what FX writes, and graph_code removes
    assert graph_code(traced).splitlines() == ["def forward(self, v):", "    mul = v * 2", "    relu = mul.relu()",
                                               "    sum_1 = relu.sum()", "    return sum_1"]
    chained = type("Traced", (), {"code": "    y = f(a, b);  a = b = None\n    return y"})()
    assert graph_code(chained) == "y = f(a, b)\n    return y"  # one statement frees several names


# Found by mutation testing: each test below fails on a small, plausible change to the code.


def _uneven_graph():
    """The leaf a is reached along a long path (through exp, found early) and a short one (found late)."""
    a = torch.randn(3, requires_grad=True)
    t1 = a.exp()
    return (t1 + t1.sin().cos().tanh()) + (a * 3).neg(), a


def test_every_arrow_points_down_from_the_node_that_sends_the_gradient():
    out, a = _uneven_graph()
    ax = draw_autograd_graph(out.sum(), names={"a": a})
    arrows = [t for t in ax.texts if isinstance(t, matplotlib.text.Annotation)]
    assert len(arrows) == len(backward_graph(out.sum())[1])
    for arrow in arrows:  # xyann: where it starts (the parent), xy: where it points (the child)
        assert arrow.xy[1] < arrow.xyann[1], (arrow.xyann, arrow.xy)
    leaf = next(t for t in ax.texts if t.get_text() == "a\n(3,)")
    assert leaf.get_position()[1] == -7  # the longest path: Sum Add Add Tanh Cos Sin Exp AccumulateGrad
    low, high = ax.get_ylim()
    assert low < -7 < 0 < high
    plt.close("all")


def test_each_row_is_centred_and_leaves_are_green():
    out, a = _uneven_graph()
    ax = draw_autograd_graph(out.sum(), names={"a": a})
    boxes = [t for t in ax.texts if t.get_text()]
    rows = {}
    for t in boxes:
        x, y = t.get_position()
        rows.setdefault(y, []).append(x)
    assert any(len(xs) > 1 for xs in rows.values())
    for xs in rows.values():
        assert abs(sum(xs)) < 1e-9, rows
    colors = {t.get_text(): matplotlib.colors.to_hex(t.get_bbox_patch().get_facecolor()) for t in boxes}
    assert colors["a\n(3,)"] == "#d8ecd8" and colors["ExpBackward0"] == "#dde6f4"
    plt.close("all")


def test_a_leaf_without_a_name_is_called_leaf():
    a = torch.randn(2, 3, requires_grad=True)
    nodes, _ = backward_graph((a * 2).sum())
    assert node_label(nodes[-1]) == "leaf\n(2, 3)"
    assert node_label(nodes[-1], {"b": torch.zeros(2, 3)}) == "leaf\n(2, 3)"


def test_nodes_are_listed_breadth_first():
    a = torch.randn(3, requires_grad=True)
    b = torch.randn(3, requires_grad=True)
    nodes, _ = backward_graph((a.exp().sin() + b.cos()).sum())
    labels = [node_label(n, {"a": a, "b": b}) for n in nodes]
    assert labels == ["SumBackward0", "AddBackward0", "SinBackward0", "CosBackward0", "ExpBackward0",
                      "b\n(3,)", "a\n(3,)"]

"""A scalar reverse-mode autograd engine, small enough to read in one sitting.

Introduced in the chapter "Autograd, from the chain rule to a working engine"
(book/autograd.ipynb).

A ``Value`` holds one number, the values it was computed from (its parents) and a closure that
pushes its gradient back to them by the chain rule. ``backward`` puts the graph in topological
order and runs those closures from the output back to the leaves. ``Neuron``, ``Layer`` and
``MLP`` build a multi-layer perceptron from values. PyTorch is the oracle: tests/test_engine.py
checks the gradients against ``torch.autograd``.
"""

from __future__ import annotations

import gc
import math
import numbers
import random
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence


def _no_parents(grad: float) -> None:
    """The backward closure of a leaf: it has no one to pass its gradient to."""


def _is_number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _as_value(other, op: str) -> Value:
    if isinstance(other, Value):
        return other
    if _is_number(other):
        return Value(other)
    raise TypeError(f"unsupported operand for {op}: a Value combines with an int, a float or "
                    f"another Value, not {type(other).__name__}; for a tensor, take a number "
                    f"out with .item()")


class Value:
    """One scalar node of the graph.

    ``data`` is its number; after ``backward()`` from an output ``L``, ``grad`` is
    dL/d(this value). Every operation returns a new ``Value`` that records its parents and sets
    ``_backward``: a closure that, given the new value's gradient, adds ``local derivative *
    gradient`` to each parent's ``grad`` (the chain rule). The closures never refer to the value
    they belong to, so a graph holds no reference cycles and is freed as soon as its output is
    no longer used. ``op`` names the operation that made the value (``""`` for a leaf), for reading
    a graph: ``repr`` shows it.
    """

    __slots__ = ("data", "grad", "_parents", "_backward", "op")

    def __init__(self, data: float, parents: tuple[Value, ...] = (), op: str = ""):
        if not _is_number(data):
            raise TypeError(f"a Value holds one int or float, got {type(data).__name__}")
        self.data = float(data)
        self.grad = 0.0
        self._parents = parents
        self._backward: Callable[[float], None] = _no_parents
        self.op = op

    def __repr__(self) -> str:
        made_by = f", op={self.op!r}" if self.op else ""
        return f"Value(data={self.data:.6g}, grad={self.grad:.6g}{made_by})"

    def __add__(self, other) -> Value:
        other = _as_value(other, "+")
        out = Value(self.data + other.data, (self, other), "+")

        def backward(grad: float):  # d(a + b)/da = d(a + b)/db = 1
            self.grad += grad
            other.grad += grad  # += not =: in a + a, a collects both paths
        out._backward = backward
        return out

    def __mul__(self, other) -> Value:
        other = _as_value(other, "*")
        out = Value(self.data * other.data, (self, other), "*")

        def backward(grad: float):  # d(ab)/da = b, d(ab)/db = a
            self.grad += other.data * grad
            other.grad += self.data * grad
        out._backward = backward
        return out

    def __pow__(self, exponent: float) -> Value:
        if not _is_number(exponent):
            raise TypeError(f"unsupported operand for **: the exponent must be an int or a float, "
                            f"not {type(exponent).__name__} (the engine differentiates x**n for a "
                            f"constant n)")
        exponent = float(exponent)
        if self.data == 0 and exponent < 0:  # also how x / 0 arrives here, as x * 0 ** -1
            raise ZeroDivisionError(f"division by zero: 0 ** {exponent:g} is not defined")
        if self.data == 0 and 0 < exponent < 1:  # refused now, not as a crash in backward()
            raise ValueError(f"0 ** {exponent:g} has no finite derivative: d(x^n)/dx = n x^(n-1) "
                             f"is infinite at x = 0 for 0 < n < 1, so backward() could not pass "
                             f"a gradient through it; keep the base away from 0, for instance "
                             f"(x + 1e-12) ** {exponent:g}")
        result = self.data ** exponent
        if isinstance(result, complex):
            raise ValueError(f"({self.data}) ** {exponent} is not a real number: a negative base "
                             f"needs an integer exponent")
        out = Value(result, (self,), f"**{exponent:g}")

        def backward(grad: float):  # d(x^n)/dx = n x^(n-1); n = 0 would compute 0 ** -1 at 0
            local = exponent * self.data ** (exponent - 1) if exponent != 0 else 0.0
            self.grad += local * grad
        out._backward = backward
        return out

    def exp(self) -> Value:
        result = math.exp(self.data)
        out = Value(result, (self,), "exp")

        def backward(grad: float):  # d(e^x)/dx = e^x, the result itself
            self.grad += result * grad
        out._backward = backward
        return out

    def log(self) -> Value:
        if self.data <= 0:
            raise ValueError(f"log is defined for positive numbers only, got {self.data}")
        out = Value(math.log(self.data), (self,), "log")

        def backward(grad: float):  # d(log x)/dx = 1/x
            self.grad += grad / self.data
        out._backward = backward
        return out

    def tanh(self) -> Value:
        result = math.tanh(self.data)
        out = Value(result, (self,), "tanh")

        def backward(grad: float):  # d(tanh x)/dx = 1 - tanh(x)^2
            self.grad += (1.0 - result * result) * grad
        out._backward = backward
        return out

    def relu(self) -> Value:
        out = Value(max(self.data, 0.0), (self,), "relu")

        def backward(grad: float):  # 1 where x > 0, else 0 (PyTorch's choice at x = 0 too)
            if self.data > 0:
                self.grad += grad
        out._backward = backward
        return out

    # The rest are built from the operations above, so they need no backward rule of their own.
    def __neg__(self) -> Value:
        return self * -1

    def __sub__(self, other) -> Value:
        return self + (-_as_value(other, "-"))

    def __truediv__(self, other) -> Value:
        return self * _as_value(other, "/") ** -1

    def __radd__(self, other) -> Value:
        return self + other

    def __rmul__(self, other) -> Value:
        return self * other

    def __rsub__(self, other) -> Value:
        return _as_value(other, "-") + (-self)

    def __rtruediv__(self, other) -> Value:
        return _as_value(other, "/") * self ** -1

    def __rpow__(self, base) -> Value:
        raise TypeError("unsupported operand for **: a Value can be a base but not an exponent; "
                        "write b ** x as (x * math.log(b)).exp()")

    def backward(self, grad: float | None = None) -> None:
        """Reverse mode from this value: each value it depends on gets d(self)/d(it) in ``grad``.

        ``grad`` seeds the output (1.0 when omitted). Leaves accumulate across calls, like
        PyTorch's ``.grad``: zero them (``MLP.zero_grad``) between training steps.
        """
        backward([self], None if grad is None else [grad])


def topological_order(outputs: Sequence[Value]) -> list[Value]:
    """Every value the outputs depend on, each listed after all of its parents.

    A depth-first search with a stack (not recursion, so deep graphs are fine).
    """
    order, seen = [], set()
    for root in outputs:
        stack = [(root, False)]
        while stack:
            node, parents_listed = stack.pop()
            if parents_listed:
                order.append(node)
            elif node not in seen:
                seen.add(node)
                stack.append((node, True))  # listed after its parents
                stack.extend((p, False) for p in node._parents
                             if p not in seen)
    return order


def backward(outputs: Value | Sequence[Value],
             grads: Sequence[float] | None = None) -> None:
    """Reverse mode from one output, or from several with one seed each.

    For outputs ``y_1..y_m`` and seeds ``g_1..g_m``, every leaf ``x`` they
    depend on gets ``x.grad += sum_i g_i dy_i/dx``: the vector-Jacobian
    product ``g^T J``; every intermediate value's grad is set to that sum
    (not added to). Without seeds the output must be a single value (seed
    1), as in PyTorch.
    """
    outputs, grads = _outputs_and_seeds(outputs, grads)
    order = topological_order(outputs)
    # Intermediate gradients are recomputed; leaves accumulate.
    for node in order:
        if node._parents:
            node.grad = 0.0
    for out, g in zip(outputs, grads):
        out.grad += g
    for node in reversed(order):  # a grad is complete before it is passed on
        node._backward(node.grad)


def _outputs_and_seeds(outputs, grads) -> tuple[list[Value], list[float]]:
    """``backward``'s arguments as two lists of the same length, or a clear error."""
    outputs = [outputs] if isinstance(outputs, Value) else list(outputs)
    for out in outputs:
        if not isinstance(out, Value):
            raise TypeError(f"backward expects a Value or a list of Values, got a "
                            f"{type(out).__name__} in it")
    if grads is None:
        if len(outputs) != 1:
            raise RuntimeError(f"grad can be implicitly created only for scalar outputs: this "
                               f"output is {len(outputs)} Values; pass one seed per output, "
                               f"backward(outputs, grads=[...]), to get a vector-Jacobian product")
        return outputs, [1.0]
    grads = list(grads)
    if len(grads) != len(outputs):
        raise ValueError(f"backward got {len(grads)} seeds for {len(outputs)} outputs: give one "
                         f"per output")
    for g in grads:
        if not _is_number(g):
            raise TypeError(f"a seed gradient is an int or a float, got {type(g).__name__}")
    return outputs, grads


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector inside the block (training a model of values).

    A graph of scalars is tens of thousands of small objects, and the collector would scan them
    all a few times per training step, making it about five times slower. The engine's graphs
    hold no reference cycles, so reference counting alone frees them.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class Neuron:
    """``activation(w . x + b)`` for ``n_inputs`` inputs; ``activation`` is "tanh", "relu" or None.

    Weights and bias are drawn like ``torch.nn.Linear``'s, uniformly from
    ``[-1/sqrt(n_inputs), 1/sqrt(n_inputs)]``, by ``rng`` (Python's global generator, which
    ``seed_everything`` seeds, when None).
    """

    def __init__(self, n_inputs: int, activation: str | None = "tanh",
                 rng: random.Random | None = None):
        if activation not in ("tanh", "relu", None):
            raise ValueError(f"activation must be 'tanh', 'relu' or None, got {activation!r}")
        rng = rng if rng is not None else random
        bound = 1.0 / math.sqrt(n_inputs)
        self.w = [Value(rng.uniform(-bound, bound)) for _ in range(n_inputs)]
        self.b = Value(rng.uniform(-bound, bound))
        self.activation = activation

    def __call__(self, x: Sequence[Value | float]) -> Value:
        if len(x) != len(self.w):
            raise ValueError(f"this neuron takes {len(self.w)} inputs, got {len(x)}")
        total = self.b
        for w_i, x_i in zip(self.w, x):
            total = total + w_i * x_i
        if self.activation == "tanh":
            return total.tanh()
        return total.relu() if self.activation == "relu" else total

    def parameters(self) -> list[Value]:
        return self.w + [self.b]


class Layer:
    """``n_outputs`` neurons that read the same ``n_inputs`` values."""

    def __init__(self, n_inputs: int, n_outputs: int, activation: str | None = "tanh",
                 rng: random.Random | None = None):
        self.neurons = [Neuron(n_inputs, activation, rng) for _ in range(n_outputs)]

    def __call__(self, x: Sequence[Value | float]) -> list[Value]:
        return [neuron(x) for neuron in self.neurons]

    def parameters(self) -> list[Value]:
        return [p for neuron in self.neurons for p in neuron.parameters()]


class MLP:
    """Layers of sizes ``layer_sizes`` on ``n_inputs`` inputs; the last layer is linear.

    Calling it on ``n_inputs`` numbers gives a Value, or a list of Values when the last layer
    has more than one output.
    """

    def __init__(self, n_inputs: int, layer_sizes: Sequence[int],
                 activation: str | None = "tanh", rng: random.Random | None = None):
        if activation not in ("tanh", "relu", None):
            raise ValueError(f"activation must be 'tanh', 'relu' or None, got {activation!r}")
        sizes = [n_inputs, *layer_sizes]
        last = len(layer_sizes) - 1
        self.layers = [Layer(sizes[i], sizes[i + 1], activation if i < last else None, rng)
                       for i in range(len(layer_sizes))]

    def __call__(self, x: Sequence[Value | float]) -> Value | list[Value]:
        for layer in self.layers:
            x = layer(x)
        return x[0] if len(x) == 1 else x

    def parameters(self) -> list[Value]:
        return [p for layer in self.layers for p in layer.parameters()]

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = 0.0

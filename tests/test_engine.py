"""The scalar engine against PyTorch (the oracle), its error messages, and the chapter's exercises."""

import gc
import math
import operator
import random

import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

from helpers.engine import MLP, Layer, Neuron, Value, backward, cyclic_gc_paused
from helpers.exercises import FAILED, NOT_DONE, PASSED, judge_answer

# Reproducible in CI (the same examples every run), and no example database written to disk.
PROPERTY = settings(max_examples=300, deadline=None, database=None, derandomize=True)
TOLERANCE = dict(rtol=1e-6, atol=1e-6)  # float64 on both sides: any real bug is far larger

# ---------------------------------------------------------------------------------------------
# Random expressions. A program is a list of steps (operation, operand indices, constant); each
# step reads earlier results by index, so sub-expressions are shared and used more than once.
# The operands are chosen on the engine's side, where the program also steps around the places
# an operation is undefined or not differentiable; PyTorch then replays exactly the same steps.
# ---------------------------------------------------------------------------------------------

OPERATIONS = ["add", "sub", "mul", "div", "pow", "neg", "exp", "log", "tanh", "relu",
              "add_number", "number_minus", "times_number", "number_over"]
EXPONENTS = [2, 3, -1, -2, 0.5, 1.5, 0]

inputs_strategy = st.lists(st.floats(-3, 3, allow_nan=False), min_size=1, max_size=4)
steps_strategy = st.lists(
    st.tuples(st.sampled_from(OPERATIONS), st.integers(0, 10**6), st.integers(0, 10**6),
              st.floats(-3, 3, allow_nan=False)),
    min_size=1, max_size=25)


def _fits(op: str, a: float, b: float, number: float, exponent: float) -> bool:
    """Whether the step is defined and differentiable, with a margin, at these values."""
    if op == "div":
        return abs(b) > 0.2
    if op == "number_over":
        return abs(a) > 0.2
    if op == "log":
        return a > 0.2
    if op == "exp":
        return a < 5
    if op == "relu":
        return abs(a) > 1e-6  # at 0 the two sides may disagree on the sign of a rounding error
    if op == "pow":
        return (exponent >= 0 or abs(a) > 0.2) and (exponent == int(exponent) or a > 0.2)
    return True


def _apply(op: str, a, b, number: float, exponent: float):
    """One step; the same code for engine values and for torch tensors."""
    return {
        "add": lambda: a + b, "sub": lambda: a - b, "mul": lambda: a * b, "div": lambda: a / b,
        "pow": lambda: a ** exponent, "neg": lambda: -a, "exp": lambda: a.exp(),
        "log": lambda: a.log(), "tanh": lambda: a.tanh(), "relu": lambda: a.relu(),
        "add_number": lambda: a + number, "number_minus": lambda: number - a,
        "times_number": lambda: number * a, "number_over": lambda: number / a,
    }[op]()


def run_program(inputs: list[float], steps: list[tuple]):
    """Build the program in the engine; returns (leaves, results, the steps actually taken)."""
    leaves = [Value(x) for x in inputs]
    pool, taken, uses = list(leaves), [], [0] * len(leaves)
    for op, i, j, number in steps:
        i, j = i % len(pool), j % len(pool)
        exponent = EXPONENTS[j % len(EXPONENTS)]
        if not _fits(op, pool[i].data, pool[j].data, number, exponent):
            op = "tanh"  # defined and smooth everywhere
        result = _apply(op, pool[i], pool[j], number, exponent)
        if abs(result.data) > 1e4:  # keep values, and with them the gradients, of moderate size
            op, result = "tanh", pool[i].tanh()
        taken.append((op, i, j, number, exponent))
        uses[i] += 1
        uses[j] += op in ("add", "sub", "mul", "div")
        uses.append(0)
        pool.append(result)
    if max(uses) > 1:
        event("a sub-expression is used more than once")
    return leaves, pool[len(leaves):], taken


def replay_in_torch(inputs: list[float], taken: list[tuple]):
    leaves = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in inputs]
    pool = list(leaves)
    for op, i, j, number, exponent in taken:
        pool.append(_apply(op, pool[i], pool[j], number, exponent))
    return leaves, pool[len(leaves):]


def torch_grads(leaves: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([x.grad if x.grad is not None else torch.zeros((), dtype=torch.float64)
                        for x in leaves])


def engine_grads(leaves: list[Value]) -> torch.Tensor:
    return torch.tensor([x.grad for x in leaves], dtype=torch.float64)


@PROPERTY
@given(inputs_strategy, steps_strategy)
def test_gradients_of_random_expressions_match_torch(inputs, steps):
    leaves, results, taken = run_program(inputs, steps)
    out = sum(results[1:], results[0])  # every result reaches the output, some along several paths
    out.backward()

    t_leaves, t_results = replay_in_torch(inputs, taken)
    t_out = torch.stack(t_results).sum()
    torch.testing.assert_close(torch.tensor(out.data, dtype=torch.float64), t_out.detach(), **TOLERANCE)
    t_out.backward()
    torch.testing.assert_close(engine_grads(leaves), torch_grads(t_leaves), **TOLERANCE)


@PROPERTY
@given(inputs_strategy, steps_strategy)
def test_a_second_backward_after_zeroing_gives_the_same_gradients_and_without_zeroing_adds(inputs, steps):
    leaves, results, _ = run_program(inputs, steps)
    out = sum(results[1:], results[0])
    out.backward()
    first = engine_grads(leaves)
    for leaf in leaves:
        leaf.grad = 0.0
    out.backward()  # intermediate gradients must not carry over from the first pass
    torch.testing.assert_close(engine_grads(leaves), first, rtol=0, atol=0)
    out.backward()  # leaves accumulate, as PyTorch's .grad does
    torch.testing.assert_close(engine_grads(leaves), 2 * first, **TOLERANCE)


@PROPERTY
@given(inputs_strategy, steps_strategy, st.lists(st.floats(-2, 2, allow_nan=False), min_size=1, max_size=4))
def test_backward_from_several_outputs_is_torchs_vector_jacobian_product(inputs, steps, seeds):
    leaves, results, taken = run_program(inputs, steps)
    outputs = results[-len(seeds):]
    seeds = seeds[:len(outputs)]
    backward(outputs, seeds)

    t_leaves, t_results = replay_in_torch(inputs, taken)
    torch.stack(t_results[-len(seeds):]).backward(torch.tensor(seeds, dtype=torch.float64))
    torch.testing.assert_close(engine_grads(leaves), torch_grads(t_leaves), **TOLERANCE)


def test_a_shared_sub_expression_collects_the_gradient_of_every_use():
    a, b = Value(0.7), Value(-1.3)
    shared = a * b + a  # used four times below, a and b themselves several times more
    out = shared * shared + shared.tanh() * a - shared / b + (shared + a).exp()
    out.backward()

    ta, tb = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (0.7, -1.3))
    t_shared = ta * tb + ta
    t_out = t_shared * t_shared + t_shared.tanh() * ta - t_shared / tb + (t_shared + ta).exp()
    t_out.backward()
    torch.testing.assert_close(torch.tensor([a.grad, b.grad], dtype=torch.float64),
                               torch.stack([ta.grad, tb.grad]), **TOLERANCE)


def test_a_value_added_to_itself_gets_twice_the_gradient():
    a = Value(3.0)
    (a + a).backward()
    assert a.grad == 2.0
    b = Value(3.0)
    (b * b).backward()
    assert b.grad == 6.0


def test_backward_with_a_seed_scales_every_gradient():
    x = Value(0.5)
    y = x.tanh() * 3
    y.backward(grad=2.0)
    assert math.isclose(x.grad, 2.0 * 3 * (1 - math.tanh(0.5) ** 2))


def test_a_deep_graph_does_not_hit_the_recursion_limit():
    x = Value(1.0)
    y = x
    for _ in range(5000):
        y = y * 1.0 + 0.0
    y.backward()
    assert x.grad == 1.0


def test_graphs_hold_no_reference_cycles():
    # Reference counting alone frees a graph, which is why pausing the cyclic collector is safe.
    with cyclic_gc_paused():
        gc.collect()
        model = MLP(2, [4, 1], rng=__import__("random").Random(0))
        loss = (model([0.5, -1.0]) - 1.0) ** 2 + (model([1.0, 2.0]).exp() + 1).log()
        loss.backward()
        del loss
        assert gc.collect() == 0


def test_cyclic_gc_paused_restores_the_collector():
    assert gc.isenabled()
    with cyclic_gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(ZeroDivisionError):
        with cyclic_gc_paused():
            1 / 0
    assert gc.isenabled()


# ---------------------------------------------------------------------------------------------
# The multi-layer perceptron
# ---------------------------------------------------------------------------------------------

def _mlp_in_torch(model: MLP):
    """Copies of the engine's weights as float64 leaf tensors, one (W, b) pair per layer."""
    return [(torch.tensor([[w.data for w in n.w] for n in layer.neurons], dtype=torch.float64, requires_grad=True),
             torch.tensor([n.b.data for n in layer.neurons], dtype=torch.float64, requires_grad=True))
            for layer in model.layers]


@pytest.mark.parametrize("activation", ["tanh", "relu", None])
def test_mlp_loss_gradients_match_torch(activation):
    import random

    model = MLP(3, [5, 4, 2], activation=activation, rng=random.Random(1))
    points = [[0.3, -1.2, 0.8], [1.5, 0.1, -0.4], [-0.7, 0.9, 2.0]]
    loss = sum(((out - 0.5) ** 2 for x in points for out in model(x)), Value(0.0))
    loss.backward()

    layers = _mlp_in_torch(model)
    h = torch.tensor(points, dtype=torch.float64)
    for k, (w, b) in enumerate(layers):
        h = h @ w.T + b
        if k < len(layers) - 1 and activation is not None:
            h = h.tanh() if activation == "tanh" else h.relu()
    ((h - 0.5) ** 2).sum().backward()
    engine_grads_flat = torch.tensor([p.grad for p in model.parameters()], dtype=torch.float64)
    # parameters() lists, neuron by neuron, its weights then its bias
    torch_grads_flat = torch.cat([torch.cat([w.grad, b.grad[:, None]], dim=1).flatten() for w, b in layers])
    torch.testing.assert_close(engine_grads_flat, torch_grads_flat, **TOLERANCE)


def test_mlp_shapes_initialisation_and_zero_grad():
    import random

    model = MLP(2, [16, 1], rng=random.Random(0))
    assert len(model.parameters()) == 16 * 3 + 17
    assert isinstance(model([1.0, 2.0]), Value)
    assert len(MLP(2, [3, 2])([1.0, 2.0])) == 2
    bound = 1 / math.sqrt(16)  # like torch.nn.Linear(16, 1)
    assert all(-bound <= p.data <= bound for p in model.layers[1].parameters())
    assert [n.activation for n in model.layers[0].neurons] == ["tanh"] * 16
    assert model.layers[1].neurons[0].activation is None  # the output layer is linear
    model([1.0, 2.0]).backward()
    assert any(p.grad != 0 for p in model.parameters())
    model.zero_grad()
    assert all(p.grad == 0 for p in model.parameters())
    assert len(Layer(2, 3)([1.0, 2.0])) == 3


def test_an_mlp_built_after_seeding_is_reproducible():
    from helpers.runtime import seed_everything

    seed_everything(0)
    first = [p.data for p in MLP(2, [3, 1]).parameters()]
    seed_everything(0)
    assert [p.data for p in MLP(2, [3, 1]).parameters()] == first


def test_mlp_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match="this neuron takes 2 inputs, got 3"):
        Neuron(2)([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="activation must be 'tanh', 'relu' or None, got 'sigmoid'"):
        MLP(2, [3, 1], activation="sigmoid")


# ---------------------------------------------------------------------------------------------
# Errors: what is wrong and what to do
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("other", ["1.0", None, [1.0], torch.tensor(1.0), True])
@pytest.mark.parametrize("op", ["+", "-", "*", "/"])
def test_an_unsupported_operand_type_is_named_on_either_side(op, other):
    apply = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}[op]
    expected = (f"unsupported operand for {op}: a Value combines with an int, a float or another "
                f"Value, not {type(other).__name__}")
    for left, right in ((Value(2.0), other), (other, Value(2.0))):
        with pytest.raises(TypeError) as error:  # a tensor on the left defers to Value's reflected method
            apply(left, right)
        assert str(error.value).startswith(expected), str(error.value)


def test_only_numbers_make_values_and_exponents():
    with pytest.raises(TypeError, match="a Value holds one int or float, got Tensor"):
        Value(torch.tensor(1.0))
    with pytest.raises(TypeError, match="the exponent must be an int or a float, not Value"):
        Value(2.0) ** Value(3.0)
    with pytest.raises(TypeError, match="a Value can be a base but not an exponent"):
        2 ** Value(3.0)


def test_values_outside_an_operations_domain_are_refused():
    with pytest.raises(ValueError, match=r"log is defined for positive numbers only, got -1.0"):
        Value(-1.0).log()
    with pytest.raises(ValueError, match=r"\(-8.0\) \*\* 0.5 is not a real number"):
        Value(-8.0) ** 0.5
    with pytest.raises(ZeroDivisionError, match="division by zero"):
        Value(1.0) / Value(0.0)
    assert (Value(-2.0) ** 3).data == -8.0


@pytest.mark.parametrize("exponent", [0.5, 0.25])
def test_a_root_of_zero_is_refused_because_its_derivative_is_infinite(exponent):
    # The value exists, but backward() would need n * 0 ** (n - 1), which is infinite (PyTorch
    # gives inf): refused when the value is made, with the way out, not as a crash in backward.
    with pytest.raises(ValueError, match=rf"0 \*\* {exponent} has no finite derivative: .* keep the "
                                         rf"base away from 0, for instance \(x \+ 1e-12\) \*\* {exponent}"):
        Value(0.0) ** exponent


@pytest.mark.parametrize("exponent, slope", [(0, 0.0), (1, 1.0), (1.5, 0.0), (2, 0.0)])
def test_other_powers_of_zero_have_their_finite_derivative(exponent, slope):
    x = Value(0.0)
    (x ** exponent).backward()
    assert x.grad == slope


def test_backward_on_several_outputs_without_seeds_is_refused_as_in_torch():
    a = Value(2.0)
    outputs = [a * 2, a * 3]
    with pytest.raises(RuntimeError, match="grad can be implicitly created only for scalar outputs: "
                                           "this output is 2 Values; pass one seed per output"):
        backward(outputs)
    with pytest.raises(RuntimeError, match="grad can be implicitly created only for scalar outputs"):
        torch.tensor([2.0, 3.0], requires_grad=True).mul(2).backward()
    backward(outputs, [1.0, 10.0])
    assert a.grad == 2 + 30
    backward([a * 5])  # a single output needs no seed
    assert a.grad == 32 + 5


def test_backward_checks_its_seeds_and_outputs():
    a = Value(1.0)
    with pytest.raises(ValueError, match="backward got 1 seeds for 2 outputs: give one per output"):
        backward([a * 2, a * 3], [1.0])
    with pytest.raises(TypeError, match="a seed gradient is an int or a float, got str"):
        a.backward(grad="1")
    with pytest.raises(TypeError, match="backward expects a Value or a list of Values, got a float in it"):
        backward([a, 1.0])


def test_repr_shows_data_and_grad_and_the_operation_that_made_a_value():
    v = Value(2.0)
    product = v * 3
    product.backward()
    assert repr(v) == "Value(data=2, grad=3)"  # a leaf
    assert repr(product) == "Value(data=6, grad=1, op='*')"
    assert repr(v.tanh()).endswith("op='tanh')")


# ---------------------------------------------------------------------------------------------
# The chapter's exercises: the reference answers pass, typical wrong answers are told precisely
# ---------------------------------------------------------------------------------------------

def sigmoid_right(v):
    s = 1.0 / (1.0 + math.exp(-v.data))
    out = Value(s, (v,), "sigmoid")

    def backward(grad):
        v.grad += s * (1.0 - s) * grad
    out._backward = backward
    return out


def sigmoid_overwrites(v):
    s = 1.0 / (1.0 + math.exp(-v.data))
    out = Value(s, (v,), "sigmoid")

    def backward(grad):
        v.grad = s * (1.0 - s) * grad
    out._backward = backward
    return out


def sigmoid_ignores_incoming_gradient(v):
    s = 1.0 / (1.0 + math.exp(-v.data))
    out = Value(s, (v,), "sigmoid")

    def backward(grad):
        v.grad += s * (1.0 - s)
    out._backward = backward
    return out


def sigmoid_without_backward(v):
    return Value(1.0 / (1.0 + math.exp(-v.data)), (v,), "sigmoid")


def sigmoid_wrong_derivative(v):
    s = 1.0 / (1.0 + math.exp(-v.data))
    out = Value(s, (v,), "sigmoid")

    def backward(grad):
        v.grad += s * grad  # forgot the (1 - s)
    out._backward = backward
    return out


def sigmoid_composed(v):
    return 1 / (1 + (-v).exp())


def test_sigmoid_exercise_reference_passes():
    verdict = judge_answer("autograd.sigmoid_op", sigmoid_right)
    assert verdict.status == PASSED, verdict.message


@pytest.mark.parametrize("answer, message", [
    (sigmoid_overwrites, "on sigmoid(v) * v, where v also receives a gradient along another path, "
                         "v.grad is 0.2237 but should be 1.041: add to v.grad (+=) instead of overwriting it"),
    (sigmoid_ignores_incoming_gradient, "on sigmoid(v) * 3, v.grad is 0.1966 but should be 0.5898: "
                                        "multiply the local derivative by the gradient the closure receives"),
    (sigmoid_without_backward, "after sigmoid(v).backward() at v = -2, v.grad is 0 but should be 0.105: "
                               "set out._backward to a closure that adds to v.grad"),
    (sigmoid_wrong_derivative, "after sigmoid(v).backward() at v = -2, v.grad is 0.1192 but should be 0.105"),
    (sigmoid_composed, "sigmoid(v) should be one new Value whose only parent is v"),
    (lambda v: 1.0 / (1.0 + math.exp(-v.data)), "sigmoid(v) returned a float, not a Value"),
    (lambda v: Value(0.5, (v,)), "sigmoid(v).data is 0.5 at v = -2, but sigmoid(-2) = 0.1192"),
])
def test_sigmoid_exercise_wrong_answers_are_told_what_is_wrong(answer, message):
    verdict = judge_answer("autograd.sigmoid_op", answer)
    assert verdict.status == FAILED
    assert verdict.message.startswith(message), verdict.message


@pytest.mark.parametrize("crash_at, on", [(1.0, "on v = Value(1), in sigmoid(v) * 3, "),
                                          (1.5, "on v = Value(1.5), in sigmoid(v) * v, ")])
def test_sigmoid_exercise_names_the_input_of_a_crash_in_its_last_checks(crash_at, on):
    def crashes_at_one_point(v):
        if v.data == crash_at:
            raise ValueError("only here")
        return sigmoid_right(v)

    verdict = judge_answer("autograd.sigmoid_op", crashes_at_one_point)
    assert verdict.status == FAILED
    assert verdict.message.startswith(on + "the answer raised ValueError: only here"), verdict.message


def train_step_right(model, optimizer, inputs, targets):
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(inputs), targets)
    loss.backward()
    optimizer.step()
    return loss.item()


def train_step_buggy(model, optimizer, inputs, targets):
    loss = torch.nn.functional.mse_loss(model(inputs), targets)
    loss.backward()
    optimizer.step()
    return loss.item()


def train_step_zeroes_too_late(model, optimizer, inputs, targets):
    loss = torch.nn.functional.mse_loss(model(inputs), targets)
    loss.backward()
    optimizer.zero_grad()
    optimizer.step()
    return loss.item()


def train_step_zeroes_after_step(model, optimizer, inputs, targets):
    loss = torch.nn.functional.mse_loss(model(inputs), targets)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()  # also right: the next step starts from zero
    return loss.item()


def train_step_returns_the_tensor(model, optimizer, inputs, targets):
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(inputs), targets)
    loss.backward()
    optimizer.step()
    return loss  # the chapter warns: a list of these keeps every step's graph alive


def test_train_step_reference_and_zeroing_after_the_step_pass():
    for answer in (train_step_right, train_step_zeroes_after_step):
        verdict = judge_answer("autograd.train_step", answer)
        assert verdict.status == PASSED, verdict.message


@pytest.mark.parametrize("answer, message", [
    (train_step_buggy, "step 1 is right, but after step 2 the parameters are where the exercise's code takes "
                       "them: step 2 moved them by the gradients of batch 2 and of the earlier batches "
                       "together. What does .grad hold when backward() runs in step 2?"),
    (train_step_zeroes_too_late, "after step 1 the parameters did not change: the gradients were zeroed "
                                 "(or never computed) between loss.backward() and optimizer.step()"),
    (lambda model, optimizer, inputs, targets: None, "train_step should return the loss as a number "
                                                     "(loss.item()), got NoneType"),
    (train_step_returns_the_tensor, "train_step returned the loss as a tensor that holds the step's graph "
                                    "(grad_fn set): return loss.item(), a Python number"),
    (lambda *args: train_step_returns_the_tensor(*args).detach(), "train_step returned the loss as a tensor: "
                                                                 "return loss.item()"),
])
def test_train_step_wrong_answers_are_told_what_is_wrong(answer, message):
    verdict = judge_answer("autograd.train_step", answer)
    assert verdict.status == FAILED
    assert verdict.message.startswith(message), verdict.message
    if answer is train_step_buggy:  # the exercise's own code: the symptom, not the fix
        assert "zero_grad" not in verdict.message


def test_a_train_step_that_zeroes_some_gradients_only_is_told_the_fix():
    def zeroes_the_weight_only(model, optimizer, inputs, targets):
        model.weight.grad = None  # the bias keeps its old gradient
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        optimizer.step()
        return loss.item()

    verdict = judge_answer("autograd.train_step", zeroes_the_weight_only)
    assert verdict.status == FAILED
    assert verdict.message.startswith("step 1 is right, but after step 2 the parameters differ"), verdict.message
    assert verdict.message.endswith("call optimizer.zero_grad() before loss.backward()"), verdict.message


def logistic_grad_right(X, t, w, b):
    p = torch.sigmoid(X @ w + b)
    return X.T @ (p - t) / len(t), (p - t).mean()


def test_logistic_grad_reference_passes():
    verdict = judge_answer("autograd.logistic_grad", logistic_grad_right)
    assert verdict.status == PASSED, verdict.message


def _logistic_grad_with_autograd(X, t, w, b, use_backward):
    w, b = w.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(X @ w + b, t)
    if use_backward:
        loss.backward()
        return w.grad, b.grad
    return torch.autograd.grad(loss, (w, b))


def test_logistic_grad_must_be_computed_without_autograd():
    grad, backward = torch.autograd.grad, torch.autograd.backward
    for use_backward, called in ((False, "torch.autograd.grad"), (True, "backward()")):
        verdict = judge_answer("autograd.logistic_grad",
                               lambda *args, b=use_backward: _logistic_grad_with_autograd(*args, b))
        assert verdict.status == FAILED
        assert verdict.message == ("on 4 points in 2 dimensions, the exercise asks for the gradient by hand, "
                                   f"without autograd, but the answer called {called}"), verdict.message
    # Under another name, imported before the check, it is still autograd.
    from torch.autograd import grad as gradient_of

    def aliased(X, t, w, b):
        w, b = w.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
        return gradient_of(torch.nn.functional.binary_cross_entropy_with_logits(X @ w + b, t), (w, b))

    verdict = judge_answer("autograd.logistic_grad", aliased)
    assert verdict.status == FAILED and verdict.message.endswith("called torch.autograd.grad"), verdict.message
    # Autograd is back once the check is done.
    assert (torch.autograd.grad, torch.autograd.backward) == (grad, backward)
    x = torch.tensor(2.0, requires_grad=True)
    (x * x).backward()
    assert x.grad == 4


@pytest.mark.parametrize("answer, message", [
    (lambda X, t, w, b: (X.T @ (torch.sigmoid(X @ w + b) - t), (torch.sigmoid(X @ w + b) - t).sum()),
     "on 4 points in 2 dimensions, item 0 (the gradient of w): expected tensor("),  # the sum, not the mean
    (lambda X, t, w, b: (X.T @ (t - torch.sigmoid(X @ w + b)) / len(t), (t - torch.sigmoid(X @ w + b)).mean()),
     "on 4 points in 2 dimensions, item 0 (the gradient of w): expected tensor("),  # the sign flipped
    (lambda X, t, w, b: (X.T @ (torch.sigmoid(X @ w + b) - t) / len(t), (torch.sigmoid(X @ w + b) - t).mean()[None]),
     "on 4 points in 2 dimensions, item 1 (the gradient of b): expected shape (), got shape (1,)"),
])
def test_logistic_grad_wrong_answers_are_told_what_is_wrong(answer, message):
    verdict = judge_answer("autograd.logistic_grad", answer)
    assert verdict.status == FAILED
    assert verdict.message.startswith(message), verdict.message


def test_starter_code_is_not_done_yet():
    def starter(*args):
        raise NotImplementedError

    for name in ("autograd.sigmoid_op", "autograd.train_step", "autograd.logistic_grad"):
        assert judge_answer(name, starter).status == NOT_DONE


# Found by mutation testing: each test below fails on a small, plausible change to the code.


def test_log_of_zero_is_refused_with_the_engines_message():
    with pytest.raises(ValueError, match=r"log is defined for positive numbers only, got 0.0"):
        Value(0.0).log()


def test_relu_passes_no_gradient_at_zero_like_torch():
    x = Value(0.0)
    x.relu().backward()
    t = torch.tensor(0.0, requires_grad=True)
    t.relu().backward()
    assert x.grad == t.grad.item() == 0.0


def test_backward_from_a_leaf_accumulates_like_torch():
    x = Value(2.0)
    x.backward()
    x.backward()
    assert x.grad == 2.0  # torch: a leaf's .grad accumulates, 1 + 1
    y = Value(3.0)
    z = y * 2
    backward([z, z], [1.0, 10.0])  # the same output twice: its seeds add up
    assert y.grad == 2 * 11


def test_backward_of_no_outputs_without_seeds_is_refused():
    with pytest.raises(RuntimeError, match="this output is 0 Values"):
        backward([])


def test_cyclic_gc_paused_leaves_a_disabled_collector_disabled():
    gc.disable()
    try:
        with cyclic_gc_paused():
            pass
        assert not gc.isenabled()
        with cyclic_gc_paused():  # nested: the inner block must not turn the collector back on
            with cyclic_gc_paused():
                pass
            assert not gc.isenabled()
    finally:
        gc.enable()


def test_neuron_bias_is_drawn_like_torchs_linear():
    rng = random.Random(0)
    biases = [Neuron(4, rng=rng).b.data for _ in range(200)]
    assert all(-0.5 <= b <= 0.5 for b in biases)
    assert len(set(biases)) == 200 and min(biases) < -0.4 and max(biases) > 0.4


def test_a_neuron_refuses_too_few_inputs_too():
    with pytest.raises(ValueError, match="this neuron takes 3 inputs, got 2"):
        Neuron(3)([1.0, 2.0])


def test_a_neuron_refuses_an_unknown_activation():
    with pytest.raises(ValueError, match="activation must be 'tanh', 'relu' or None, got 'sigmoid'"):
        Neuron(2, activation="sigmoid")


def test_the_rng_given_to_an_mlp_alone_decides_its_weights():
    first = [p.data for p in MLP(2, [3, 1], rng=random.Random(7)).parameters()]
    random.seed(123)  # the global generator must play no part
    again = [p.data for p in MLP(2, [3, 1], rng=random.Random(7)).parameters()]
    assert again == first
    assert [p.data for p in Layer(2, 3, rng=random.Random(7)).parameters()] == first[:9]


def test_an_mlp_of_one_linear_layer_still_refuses_an_unknown_activation():
    with pytest.raises(ValueError, match="activation must be 'tanh', 'relu' or None, got 'sigmoid'"):
        MLP(2, [1], activation="sigmoid")



def sigmoid_computed_by(function):
    """A sigmoid answer whose value is ``function(v.data)``, with the right backward closure."""
    def sigmoid(v):
        s = function(v.data)
        out = Value(s, (v,), "sigmoid")

        def backward(grad):
            v.grad += s * (1.0 - s) * grad
        out._backward = backward
        return out
    return sigmoid


def test_a_sigmoid_computed_in_float32_passes():
    in_float32 = sigmoid_computed_by(lambda x: torch.sigmoid(torch.tensor(x, dtype=torch.float32)).item())
    verdict = judge_answer("autograd.sigmoid_op", in_float32)
    assert verdict.status == PASSED, verdict.message


def test_a_sigmoid_off_in_the_sixth_digit_is_shown_with_the_digits_that_differ():
    slightly_off = sigmoid_computed_by(lambda x: 1.0 / (1.0 + math.exp(-x)) * (1 + 1e-5))
    verdict = judge_answer("autograd.sigmoid_op", slightly_off)
    assert verdict.status == FAILED
    assert verdict.message == "sigmoid(v).data is 0.1192041 at v = -2, but sigmoid(-2) = 0.1192029", verdict.message

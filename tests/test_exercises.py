import dataclasses
import json
import re
import warnings
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

from helpers import exercises
from helpers.exercises import (CHECK_ERROR, FAILED, NOT_DONE, PASSED, Case, Exercise, call_answer, check,
                               compare, judge_answer)
from helpers.notebooks import book_notebooks

ROOT = Path(__file__).resolve().parents[1]


def _stored_check_outputs() -> dict[str, str]:
    """For each `check("name", ...)` cell in the book, the text it stored."""
    found = {}
    for path in book_notebooks(ROOT):
        for cell in nbformat.read(path, as_version=4).cells:
            match = re.search(r'^check\("([\w.]+)"', cell.source, re.M) if cell.cell_type == "code" else None
            if match:
                found[match.group(1)] = "".join(o.get("text", "") for o in cell.outputs)
    return found


@pytest.mark.parametrize("name", sorted(exercises.EXERCISES))
def test_every_exercise_is_in_the_book_and_its_solution_passes(name):
    # nbval re-runs the solution and check cells and compares with this stored verdict, so the
    # reference solution in the book really passes.
    stored = _stored_check_outputs()
    assert name in stored, f"no notebook calls check({name!r}, ...)"
    assert stored[name].startswith(f"✅ {name}: passed"), stored[name]
    assert name.split(".")[0] in {p.stem for p in book_notebooks(ROOT)}, "name it after its chapter's notebook"


def test_a_wrong_answer_is_told_on_which_input_and_how():
    def only_direct_children(t):
        return 0 if t.grad_fn is None else 1 + len(t.grad_fn.next_functions)

    verdict = judge_answer("dynamic_graph.count_nodes", only_direct_children)
    assert verdict.status == FAILED
    assert verdict.message.startswith("on a * 2, expected 2, got 3")


def test_an_answer_that_raises_is_reported_not_raised():
    def crashes(t):
        return t.grad_fn.name_that_does_not_exist

    verdict = judge_answer("dynamic_graph.count_nodes", crashes)
    assert verdict.status == FAILED
    assert "the answer raised AttributeError" in verdict.message
    assert "return t.grad_fn.name_that_does_not_exist" in verdict.message


def test_starter_code_is_not_done_yet_with_the_hint():
    def starter(t):
        raise NotImplementedError("write your answer here")

    verdict = judge_answer("dynamic_graph.count_leaves", starter)
    assert verdict.status == NOT_DONE
    assert "Hint: the leaves are the AccumulateGrad nodes" in verdict.message


def _section_titles(chapter: str) -> set[str]:
    """The headings of a chapter's notebook, as the rendered book shows them (no backticks)."""
    notebook = nbformat.read(Path(__file__).parent.parent / "book" / f"{chapter}.ipynb", as_version=4)
    return {line.lstrip("#").strip().replace("`", "") for cell in notebook.cells
            if cell.cell_type == "markdown" for line in cell.source.splitlines() if line.startswith("#")}


@pytest.mark.parametrize("name", sorted(exercises.EXERCISES))
def test_every_section_a_hint_quotes_is_a_heading_of_its_chapter(name):
    # A stuck learner reads the hint first, and looks for the section it names.
    quoted = re.findall(r'"([^"]+)"', exercises.EXERCISES[name].hint)
    missing = set(quoted) - _section_titles(name.split(".")[0])
    assert not missing, f"the hint of {name} quotes sections its chapter lacks: {missing}"


def test_a_not_implemented_error_from_pytorch_is_a_crash_not_starter_code():
    # An operation PyTorch lacks (here a Module without forward) raises NotImplementedError too;
    # that is the answer's bug, shown at the learner's line, not "not done yet".
    def calls_a_missing_forward(t):
        return torch.nn.Module()(t)

    verdict = judge_answer("dynamic_graph.count_leaves", calls_a_missing_forward)
    assert verdict.status == FAILED
    assert "the answer raised NotImplementedError" in verdict.message
    assert "`return torch.nn.Module()(t)`" in verdict.message
    # Through call_answer (a judge that calls the answer itself), the same.
    verdict = judge_answer("losses.log_softmax", lambda z: torch.nn.Module()(z))
    assert verdict.status == FAILED and "raised NotImplementedError" in verdict.message


def test_a_bare_raise_not_implemented_error_is_still_not_done():
    def starter(t):
        raise NotImplementedError

    assert judge_answer("dynamic_graph.count_leaves", starter).status == NOT_DONE
    assert judge_answer("losses.log_softmax", starter).status == NOT_DONE


def test_not_a_function_and_unknown_exercise():
    assert judge_answer("dynamic_graph.count_nodes", 5).message == "expected a function, got int"
    with pytest.raises(KeyError, match="there is no exercise 'nope'"):
        judge_answer("nope", len)


@pytest.mark.parametrize("got, expected, message", [
    (torch.zeros(3), torch.zeros(3, 1), "expected shape (3, 1), got shape (3,)"),
    ([0.0, 0.0], torch.zeros(2), "expected a tensor, got list"),
    (torch.tensor([float("nan"), 1.0]), torch.ones(2), "the answer contains NaN"),
    (torch.tensor([1.0, 2.5]), torch.tensor([1.0, 2.0]), "largest difference 0.5"),
    (float("nan"), 1.0, "expected 1, got NaN"),
    ("1.0", 1.0, "expected a number, got str"),
    (3, 4, "expected 4, got 3"),
    (True, 1, "expected the int 1, got True: return a number, not a bool"),
    (3.0, 3, "expected the int 3, got 3.0: the value is right, but return it as an int"),
    (torch.tensor(3.0), 3, "expected the int 3, got tensor(3.0) of shape (): the value is right"),
    (3.5, 3, "expected 3, got 3.5"),
    (torch.tensor(True), 1, "expected the int 1, got tensor(True)"),
    ((torch.ones(1), 2), (torch.ones(1), 3), "item 1: expected 3, got 2"),
])
def test_compare_says_what_differs(got, expected, message):
    with pytest.raises(exercises._Mismatch, match=None) as err:
        compare(got, expected)
    assert message in str(err.value)


def test_compare_accepts_close_values_and_scalar_tensors():
    compare(torch.tensor([1.0, 2.0 + 1e-8]), torch.tensor([1.0, 2.0]))
    compare((1, torch.ones(2)), (1, torch.ones(2)))
    compare(np.int64(3), 3)  # an integer from NumPy is an integer
    compare(torch.tensor(3), 3)  # so is a 0-d integer tensor
    compare(np.float32(0.5), 0.5)


def test_a_float_asked_for_and_a_tensor_given_is_told_to_return_a_float():
    # The exercises that want a float say "a Python float": a tensor, with a graph or not, is not one.
    with pytest.raises(exercises._Mismatch, match=r"the value is right, but return it as a Python float"):
        compare(torch.tensor(0.5), 0.5)
    with pytest.raises(exercises._Mismatch, match=r"^expected 0.5, got 0.7$"):
        compare(torch.tensor(0.7), 0.5)  # a wrong value: the values come first
    with pytest.raises(exercises._Mismatch, match=r"the value is right, but return it as a Python float"):
        compare(torch.tensor(1), 1.0)  # an integer tensor is not a float either


def test_a_judge_exercise_and_the_grading_log(tmp_path, monkeypatch):
    log = tmp_path / "log.jsonl"
    monkeypatch.setenv(exercises.GRADING_LOG_ENV, str(log))
    exercise = Exercise(name="test.positive", title="", practises="", minutes=1, hint="return a positive number",
                        judge=lambda answer: None if answer() > 0 else f"got {answer()}")
    monkeypatch.setitem(exercises.EXERCISES, exercise.name, exercise)
    check("test.positive", lambda: 1)
    check("test.positive", lambda: -1)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(line["status"], line["message"]) for line in lines] == [(PASSED, "passed"), (FAILED, "got -1")]


def test_check_prints_the_verdict_once(capsys):
    assert check("dynamic_graph.count_nodes", lambda t: 0) is None
    assert capsys.readouterr().out == "❌ dynamic_graph.count_nodes: on a * 2, expected 2, got 0\n"


def test_an_exercise_cannot_be_registered_twice():
    with pytest.raises(ValueError, match="registered twice"):
        exercises.register(Exercise(name="dynamic_graph.count_nodes", title="", practises="", minutes=1,
                                    hint="", cases=lambda: [Case((), "")]))


def test_a_judge_that_calls_the_answer_reports_its_crash_with_the_input(monkeypatch):
    def judge(answer):
        got = call_answer(answer, "the input 3", 3)
        return None if got == 9 else f"expected 9, got {got}"

    exercise = Exercise(name="test.square", title="", practises="", minutes=1, hint="square it", judge=judge)
    monkeypatch.setitem(exercises.EXERCISES, exercise.name, exercise)
    assert judge_answer("test.square", lambda x: x * x).status == PASSED
    crashed = judge_answer("test.square", lambda x: x / 0)
    assert crashed.status == FAILED
    assert crashed.message.startswith("on the input 3, the answer raised ZeroDivisionError: division by zero")
    assert judge_answer("test.square", starter_raises).status == NOT_DONE


def starter_raises(x):
    raise NotImplementedError("write your answer here")


@pytest.mark.parametrize("name, on", [
    ("optimizers.learning_rate", "on a=1.0, b=20.0, "),
    ("autograd.sigmoid_op", "on v = Value(-2), "),
    ("autograd.train_step", "on batch 1, "),
    ("losses.bce_with_logits", "on logits [-2.0, 0.5, 3.0] and targets [0.0, 1.0, 1.0], "),
    ("fast_training.smoothed_cross_entropy",
     "on 6 rows of 4 logits with smoothing 0.1, ignore_index=2 and targets [2, 3, 0, 1, 3, 1], "),
    ("fast_training.crop_batch", "on 4 images of 3x8x8, padding 2, top [2, 4, 3, 3], left [1, 4, 4, 4], "),
])
def test_a_crashing_answer_is_told_which_input_it_crashed_on(name, on):
    def crashes(*args):
        return 1 / 0

    verdict = judge_answer(name, crashes)
    assert verdict.status == FAILED
    assert verdict.message.startswith(on + "the answer raised ZeroDivisionError: division by zero"), verdict.message


# --- The chapters on graphs, gradients, losses and optimizers ---------------------------------


def _reference_sigmoid(v):
    import math

    from helpers.engine import Value

    s = 1.0 / (1.0 + math.exp(-v.data))
    out = Value(s, (v,), "sigmoid")

    def backward(grad):
        v.grad += s * (1.0 - s) * grad
    out._backward = backward
    return out


def _reference_cross_entropy(logits, targets, ignore_index=-100):
    # F.cross_entropy's own ignore_index gives the right value, but a NaN gradient on a left-out
    # row of infinite logits, which the check refuses: the rows are dropped first.
    kept = targets != ignore_index
    return torch.nn.functional.cross_entropy(logits[kept], targets[kept])


def _reference_train_step(model, optimizer, inputs, targets):
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(inputs), targets)
    loss.backward()
    optimizer.step()
    return loss.item()


def _reference_logistic_grad(X, t, w, b):
    error = torch.sigmoid(X @ w + b) - t  # dL/dz of the mean BCE, times n
    return X.T @ error / len(t), error.mean()


def _count_nodes_by_walking(t):  # the check refuses helpers.graphs.backward_graph, which counts them
    if t.grad_fn is None:
        return 0
    seen, stack = {t.grad_fn}, [t.grad_fn]
    while stack:
        for child, _ in stack.pop().next_functions:
            if child is not None and child not in seen:
                seen.add(child)
                stack.append(child)
    return len(seen)


def _reference_answers() -> dict:
    """A right answer to each exercise of these four chapters, from helpers and PyTorch."""
    from helpers import losses

    return {
        "dynamic_graph.count_nodes": _count_nodes_by_walking,
        "dynamic_graph.count_leaves": exercises._leaves_requiring_grad,
        "autograd.sigmoid_op": _reference_sigmoid,
        "autograd.train_step": _reference_train_step,
        "autograd.logistic_grad": _reference_logistic_grad,  # by hand: the check refuses autograd
        "losses.mean_squared_error": losses.mean_squared_error,
        "losses.bce_with_logits": losses.binary_cross_entropy_with_logits,
        "losses.log_softmax": losses.log_softmax,
        "losses.cross_entropy": _reference_cross_entropy,
        "optimizers.adam_step": exercises._torch_adam_step,
        "optimizers.momentum_step": exercises._torch_momentum_step,
        "optimizers.learning_rate": lambda a, b: 2 / (a + b),
    }


def test_every_exercise_of_the_four_chapters_has_a_reference_answer_here():
    chapters = ("dynamic_graph", "autograd", "losses", "optimizers")
    assert sorted(_reference_answers()) == sorted(n for n in exercises.EXERCISES if n.startswith(chapters))


@pytest.mark.parametrize("name", sorted(_reference_answers()))
def test_checking_an_answer_leaves_the_global_random_state_alone(name):
    # A check that reseeded torch's global generator would change what the learner's notebook
    # draws next: the judges draw their inputs from generators of their own.
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    assert judge_answer(name, _reference_answers()[name]).status == PASSED
    assert torch.equal(torch.get_rng_state(), before)


def test_count_leaves_counts_an_output_that_is_itself_a_leaf():
    from helpers.graphs import backward_graph

    a = torch.tensor(2.0, requires_grad=True)
    a.backward()  # a backward pass from a leaf writes that leaf's own .grad
    assert a.grad == 1.0

    def accumulate_grad_nodes_only(t):
        nodes, _ = backward_graph(t)
        return sum(1 for node in nodes if hasattr(node, "variable"))

    verdict = judge_answer("dynamic_graph.count_leaves", accumulate_grad_nodes_only)
    assert verdict.status == FAILED
    assert verdict.message == ("on a leaf that requires a gradient, itself the output (grad_fn is None), "
                               "expected 1, got 0")


# --- Whose error is it: the answer's, or the check's own? ----------------------------------------

def _register_judge(monkeypatch, judge) -> str:
    exercise = Exercise(name="test.judged", title="", practises="", minutes=1, hint="h", judge=judge)
    monkeypatch.setitem(exercises.EXERCISES, exercise.name, exercise)
    return exercise.name


def _vectors_that_do_not_fit() -> list[Case]:
    return [Case((torch.ones(2), torch.ones(3)), "vectors of 2 and 3 elements")]


def test_a_crash_in_the_checks_own_code_is_a_check_error_not_the_answers(monkeypatch):
    # The check's code is the course's (here judge_cases and torch.dot, as its oracle); its
    # crash happens before the answer has run at all.
    name = _register_judge(monkeypatch, exercises.judge_cases(_vectors_that_do_not_fit, torch.dot))
    verdict = judge_answer(name, lambda a, b: a @ b)
    assert verdict.status == CHECK_ERROR
    assert verdict.message.startswith("the check itself failed, not your answer: RuntimeError: ")
    assert "(exercises.py, line " in verdict.message
    assert "please report it, with this message" in verdict.message
    assert str(verdict).startswith("⚠️ test.judged: ")
    exercise = Exercise(name="test.cases", title="", practises="", minutes=1, hint="h",
                        cases=_vectors_that_do_not_fit, expected=torch.dot)  # the same, as cases
    monkeypatch.setitem(exercises.EXERCISES, exercise.name, exercise)
    assert judge_answer("test.cases", lambda a, b: a @ b).status == CHECK_ERROR


def test_a_crash_inside_the_answer_called_directly_by_a_judge_is_the_answers(monkeypatch):
    def judge(answer):  # calls the answer itself, without call_answer
        return None if answer(3) == 9 else "wrong"

    name = _register_judge(monkeypatch, judge)

    def crashes_in_a_library(x):
        return torch.ones(2) @ torch.ones(3)  # raised by torch, on the answer's behalf

    verdict = judge_answer(name, crashes_in_a_library)
    assert verdict.status == FAILED
    assert verdict.message.startswith("the answer raised RuntimeError: ")
    assert "return torch.ones(2) @ torch.ones(3)" in verdict.message


def test_files_of_the_course_and_of_libraries_are_told_from_the_learners():
    assert exercises._in_course_or_library(exercises.__file__)
    assert exercises._in_course_or_library(torch.__file__)
    assert exercises._in_course_or_library(json.__file__)
    assert not exercises._in_course_or_library("/tmp/ipykernel_123/456.py")  # a notebook's cell
    assert not exercises._in_course_or_library(__file__)


def test_a_function_with_the_wrong_parameters_is_told_to_compare_them():
    # The call itself fails inside the check: no line of the learner's to show, and not a
    # line of the course's either.
    def conv_without_dilation(size, kernel_size, stride=1, padding=0):
        return (size + 2 * padding - kernel_size) // stride + 1

    verdict = judge_answer("training.conv_output_size", conv_without_dilation)
    assert verdict.status == FAILED
    assert "unexpected keyword argument 'dilation'" in verdict.message
    assert verdict.message.endswith("(when the check called it: compare its parameters with the exercise's)")
    assert "exercises.py" not in verdict.message and "line " not in verdict.message


def test_an_adam_step_that_ignores_weight_decay_is_told_so():
    def adam_without_decay(param, grad, exp_avg, exp_avg_sq, step, lr=1e-3, betas=(0.9, 0.999),
                           eps=1e-8, weight_decay=0.0):
        beta1, beta2 = betas
        m = beta1 * exp_avg + (1 - beta1) * grad
        v = beta2 * exp_avg_sq + (1 - beta2) * grad**2
        m_hat, v_hat = m / (1 - beta1**step), v / (1 - beta2**step)
        return param - lr * m_hat / (v_hat.sqrt() + eps), m, v

    verdict = judge_answer("optimizers.adam_step", adam_without_decay)
    assert verdict.status == FAILED
    assert verdict.message.endswith("weight_decay is ignored: torch.optim.Adam adds weight_decay * param "
                                    "to the gradient before the averages.")


def _nodes_without_the_leaves(t):
    seen, stack = set(), [t.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen or type(node).__name__ == "AccumulateGrad":
            continue
        seen.add(node)
        stack.extend(child for child, _ in node.next_functions)
    return len(seen)


def _nodes_once_per_path(t):
    def walk(node):
        return 0 if node is None else 1 + sum(walk(child) for child, _ in node.next_functions)
    return walk(t.grad_fn)


def _momentum_without_dampening(param, grad, buffer, lr, momentum, dampening=0.0, nesterov=False):
    b = grad.clone() if buffer is None else momentum * buffer + grad
    return param - lr * (grad + momentum * b if nesterov else b), b


def _hand_shards(num_examples, world_size, rank, epoch, seed=0, drop_last=False):
    """DistributedSampler's indices for one rank, worked out by hand (the check refuses the sampler)."""
    order = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    total = (num_examples // world_size if drop_last else -(-num_examples // world_size)) * world_size
    return (order * -(-total // num_examples))[:total][rank::world_size]


def _shards_without_the_seed(num_examples, world_size, rank, epoch, seed=0, drop_last=False):
    return _hand_shards(num_examples, world_size, rank, epoch, 0, drop_last)  # seed left at 0


def test_the_hand_shards_are_the_samplers_and_the_sampler_itself_is_refused():
    for n, world, rank, epoch, seed, drop_last in [(10, 3, 2, 1, 4, False), (10, 3, 0, 2, 1, True), (2, 5, 4, 0, 0, False)]:
        assert (_hand_shards(n, world, rank, epoch, seed, drop_last)
                == exercises._distributed_sampler_indices(n, world, rank, epoch, seed, drop_last))
    assert judge_answer("distributed.shard_indices", _hand_shards).status == PASSED
    verdict = judge_answer("distributed.shard_indices", exercises._distributed_sampler_indices)
    assert verdict.status == FAILED and "without DistributedSampler, but the answer called DistributedSampler" \
        in verdict.message, verdict.message


def test_a_count_of_nodes_without_the_leaves_is_named_where_no_other_slip_gives_it():
    a, b = torch.randn(3, requires_grad=True), torch.randn(3, requires_grad=True)
    t = a * b + a  # 4 nodes: add, mul and two AccumulateGrad
    assert exercises._count_nodes_explain(_nodes_without_the_leaves(t), 4, t).startswith(
        "That leaves out the AccumulateGrad nodes")
    assert exercises._count_nodes_explain(3, 4, t) == "That is one short: count t.grad_fn itself as well."


def _adam_written_with(slip):
    """A learner's adam_step, right but for one ``slip``."""
    def adam_step(param, grad, exp_avg, exp_avg_sq, step, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                  weight_decay=0.0):
        beta1, beta2 = betas
        grad = grad + weight_decay * param
        m = beta1 * exp_avg + (1 - beta1) * grad
        v = beta2 * exp_avg_sq + (1 - beta2) * grad**2
        t = step + 1 if slip == "step + 1" else step
        m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
        update = lr * m_hat / (v_hat.sqrt() + eps)
        if slip == "uphill":
            return param + update, m, v
        if slip == "corrected state":
            return param - update, m_hat, v_hat
        return param - update, m, v
    return adam_step


@pytest.mark.parametrize("slip, phrase", [
    ("uphill", "The step goes uphill"),
    ("step + 1", "The bias correction uses step + 1"),
    ("corrected state", "item 1 (exp_avg): expected"),
    ("corrected state", "the averages returned are the bias-corrected m_hat and v_hat"),
])
def test_an_adam_step_with_a_usual_slip_is_told_which(slip, phrase):
    assert judge_answer("optimizers.adam_step", _adam_written_with(None)).status == PASSED
    verdict = judge_answer("optimizers.adam_step", _adam_written_with(slip))
    assert verdict.status == FAILED
    assert phrase in verdict.message


def test_a_judge_that_crashes_in_course_code_is_a_check_error_even_after_calling_the_answer(monkeypatch):
    # Here the judge stands for course code: only the answer's cell counts as the learner's.
    answer_file = "/tmp/ipykernel_1/answer.py"
    namespace = {}
    exec(compile("def answer(x):\n    return x * x\n", answer_file, "exec"), namespace)
    monkeypatch.setattr(exercises, "_in_course_or_library", lambda filename: filename != answer_file)

    def judge(answer):
        answer(3)  # the answer ran fine
        return 1 / 0  # then the check's own bug

    verdict = judge_answer(_register_judge(monkeypatch, judge), namespace["answer"])
    assert verdict.status == CHECK_ERROR, verdict.message


def _crops_by_hand(images, padding, top, left):
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4, mode="reflect")
    rows, cols = top[:, None] + torch.arange(h), left[:, None] + torch.arange(w)
    return padded[torch.arange(n)[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def test_a_wrong_crop_in_another_dtype_is_failed_not_a_check_error():
    for dtype in (torch.float64, torch.float16):
        def shifted_wrong_way(images, padding, top, left):
            return _crops_by_hand(images, padding, left, top).to(dtype)

        verdict = judge_answer("fast_training.crop_batch", shifted_wrong_way)
        assert verdict.status == FAILED, verdict.message


def test_a_long_error_message_is_cut_to_its_first_line():
    def raises_a_long_message(t):
        raise ValueError("first line " + "x" * 1000 + "\nsecond line")

    verdict = judge_answer("dynamic_graph.count_nodes", raises_a_long_message)
    assert verdict.status == FAILED
    assert "\n" not in verdict.message and verdict.message.count("x") <= 300
    assert "`raise ValueError(" in verdict.message  # the learner's line is still named


# --- Hidden cases: an answer must follow the rule, not a table of the results it was shown ------


def _book_solutions() -> dict:
    """The book's solution of each exercise: its notebook's solution cells, run in order (a later
    one may call an earlier one), with the names they take from the chapter's earlier cells."""
    import math

    import torch.nn.functional as F

    from helpers.engine import Value
    from helpers.graphs import backward_graph

    found = {}
    for path in book_notebooks(ROOT):
        namespace = {"torch": torch, "math": math, "F": F, "Value": Value, "backward_graph": backward_graph}
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type != "code":
                continue
            if "solution" in cell.metadata.get("tags", []):
                exec(cell.source, namespace)
            for name, function in re.findall(r'^check\("([\w.]+)", (\w+)\)', cell.source, re.M):
                found[name] = namespace[function]
    return found


HIDDEN = sorted(name for name, exercise in exercises.EXERCISES.items() if exercise.hidden is not None)


def test_the_exercises_with_small_or_few_results_have_hidden_cases():
    # Their messages show each input and its expected result, few enough to copy into a table.
    assert {"data.batches_per_epoch", "training.conv_output_size", "evaluation.early_stopping_epoch",
            "distributed.shard_indices", "dynamic_graph.count_nodes", "dynamic_graph.count_leaves",
            "training.mean_loss", "evaluation.macro_f1", "data.tensor_mean_std", "losses.mean_squared_error",
            "losses.cross_entropy", "fast_training.smoothed_cross_entropy"} <= set(HIDDEN)


def _shown(name: str) -> list[tuple[tuple, dict, object]]:
    """(args, kwargs, expected result) of each case an exercise shows, in the order it runs them."""
    if name == "training.mean_loss":  # one case, built by the judge itself
        model, loader, _, _ = exercises._training_mean_loss_setup()
        return [((), {}, exercises._training_true_mean_loss(model, loader, torch.nn.CrossEntropyLoss()))]
    exercise = exercises.EXERCISES[name]
    cases = exercise.cases or {
        "losses.mean_squared_error": exercises._losses_mse_cases,
        "losses.cross_entropy": exercises._losses_ce_cases,
        "data.tensor_mean_std": exercises._data_stats_cases,
        "training.conv_output_size": exercises._training_conv_cases,
        "fast_training.smoothed_cross_entropy": exercises._fast_smoothing_cases,
        "evaluation.macro_f1": exercises._evaluation_label_cases,
        "evaluation.early_stopping_epoch": exercises._evaluation_curves,
        "distributed.shard_indices": exercises._distributed_shard_cases,
    }[name]
    return [(c.args, c.kwargs, exercise.hidden.expected(*c.args, **c.kwargs)) for c in cases()]


def _table_of(results: list):
    """What a learner can write after reading the failures: the shown results, one per call in the
    order the check makes them, whatever the input (a table keyed on the inputs does no better)."""
    calls = iter(results)
    return lambda *args, **kwargs: next(calls, results[0])


@pytest.mark.parametrize("name", HIDDEN)
def test_a_table_of_the_shown_results_passes_the_shown_cases_but_not_the_hidden_ones(name, monkeypatch):
    exercise = exercises.EXERCISES[name]
    without_gradient = {  # a table has no gradient: leave out the check that sees it
        "losses.cross_entropy": exercises._losses_judge(
            exercises._losses_ce_cases, exercises._losses_true_ce, exercises._LOSSES_CE_MISTAKES),
        "losses.mean_squared_error": exercises._losses_judge(
            exercises._losses_mse_cases, exercises._losses_true_mse, exercises._LOSSES_MSE_MISTAKES),
        "fast_training.smoothed_cross_entropy": exercises.judge_cases(
            exercises._fast_smoothing_cases, exercises._fast_true_smoothing, exercises._fast_smoothing_mistake),
    }
    if name in without_gradient:
        exercise = dataclasses.replace(exercise, judge=without_gradient[name])
    results = [want for _, _, want in _shown(name)]
    monkeypatch.setitem(exercises.EXERCISES, name, dataclasses.replace(exercise, hidden=None))
    assert judge_answer(name, _table_of(results)).status == PASSED  # what the hidden cases stop
    monkeypatch.setitem(exercises.EXERCISES, name, exercise)
    verdict = judge_answer(name, _table_of(results))
    assert verdict.status == FAILED
    assert verdict.message.startswith("passes the cases shown, but gives a wrong result on other inputs, which "
                                      "the check does not show: make sure it follows the rule for "
                                      f"{exercise.hidden.rule}, not only for the examples"), verdict.message
    for case in exercise.hidden.draw(torch.Generator().manual_seed(exercises.HIDDEN_SEED)):
        assert case.label not in verdict.message


def _shard_by_padding(n, world, rank, epoch, seed=0, drop_last=False):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    total = (n // world if drop_last else -(-n // world)) * world
    return [order[i % n] for i in range(total)][rank::world]


def _early_stopping_by(improves):
    def early_stopping_epoch(val_losses, patience):
        best, best_epoch, waited = float("inf"), 0, 0
        for epoch, loss in enumerate(val_losses, start=1):
            if improves(loss, best):
                best, best_epoch, waited = loss, epoch, 0
            else:
                waited += 1
                if waited == patience:
                    break
        return best_epoch
    return early_stopping_epoch


_early_stopping_by_waiting = _early_stopping_by(lambda loss, best: loss < best)


def _macro_f1_by_counting(y_true, y_pred, num_classes):
    pairs = list(zip(torch.as_tensor(y_true).tolist(), torch.as_tensor(y_pred).tolist()))
    scores = []
    for k in range(num_classes):
        tp = sum(t == k and p == k for t, p in pairs)
        wrong = sum((t == k) != (p == k) for t, p in pairs)  # false positives and false negatives
        scores.append(2 * tp / (2 * tp + wrong) if tp + wrong else 0.0)
    return sum(scores) / num_classes


def _mean_std_by_hand(images):
    x = images.double() / 255
    mean = x.mean(dim=(0, 2, 3))
    std = ((x - mean[:, None, None]) ** 2).mean(dim=(0, 2, 3)).sqrt()
    return mean.float(), std.float()


def _mean_loss_by_sums(model, loader, loss_fn):
    model.eval()
    with torch.no_grad():
        sums = [(loss_fn(model(x), y).item() * len(y), len(y)) for x, y in loader]
    model.train()
    return sum(total for total, _ in sums) / sum(count for _, count in sums)


def _smoothing_by_hand(logits, targets, smoothing, ignore_index=-100):
    kept = targets != ignore_index
    log_p = torch.log_softmax(logits[kept], dim=1)
    picked = log_p[torch.arange(len(log_p)), targets[kept]]
    return -((1 - smoothing) * picked + smoothing * log_p.mean(dim=1)).mean()


def _other_right_answers() -> dict:
    """Right answers of the exercises with hidden cases, written otherwise than the book's."""
    import math

    return _reference_answers() | {
        "data.batches_per_epoch": lambda n, b, drop_last=False: n // b if drop_last else math.ceil(n / b),
        "training.conv_output_size": lambda size, k, stride=1, padding=0, dilation=1: math.floor(
            (size + 2 * padding - dilation * (k - 1) - 1) / stride + 1),  # torch.nn.Conv2d's documentation
        "evaluation.early_stopping_epoch": _early_stopping_by_waiting,
        "distributed.shard_indices": _shard_by_padding,
        "evaluation.macro_f1": _macro_f1_by_counting,
        "data.tensor_mean_std": _mean_std_by_hand,
        "training.mean_loss": _mean_loss_by_sums,
        "fast_training.smoothed_cross_entropy": _smoothing_by_hand,
    }


@pytest.mark.parametrize("name", HIDDEN)
def test_the_books_solutions_and_other_right_answers_pass_the_hidden_cases_whatever_the_seed(name):
    answers = [_book_solutions()[name], _other_right_answers()[name]]
    hidden = exercises.EXERCISES[name].hidden
    for answer in answers:
        assert judge_answer(name, answer).status == PASSED
        for seed in range(25):
            assert exercises.hidden_failure(answer, hidden, seed=seed) is None, (answer, seed)


@pytest.mark.parametrize("name", HIDDEN)
def test_the_hidden_cases_are_the_same_at_every_check(name):
    # A verdict is reproducible: the learner's notebook, nbval and grading agree on it.
    draw = exercises.EXERCISES[name].hidden.draw
    first, again = (draw(torch.Generator().manual_seed(exercises.HIDDEN_SEED)) for _ in range(2))
    assert [c.label for c in first] == [c.label for c in again]
    assert len(first) >= 8


def _right_where_shown(name: str, elsewhere):
    """The shown results where the input is a shown case's, and ``elsewhere`` (a usual mistake)
    on any other input."""
    shown = _shown(name)

    def answer(*args, **kwargs):
        for shown_args, shown_kwargs, want in shown:
            if shown_kwargs == kwargs and len(shown_args) == len(args) and all(
                    a == b if not isinstance(a, torch.Tensor) else a is b or torch.equal(a, b)
                    for a, b in zip(shown_args, args)):
                return want
        return elsewhere(*args, **kwargs)
    return answer


@pytest.mark.parametrize("name, mistake, explanation", [
    ("data.batches_per_epoch", lambda n, b, drop_last=False: n // b,
     "Without drop_last, the samples left over after the last full batch still form a batch"),
    ("training.conv_output_size", lambda size, k, stride=1, padding=0, dilation=1:
     (size + 2 * padding - dilation * k) // stride + 1, "That takes the kernel to cover dilation * kernel_size"),
    ("evaluation.early_stopping_epoch", lambda losses, patience: exercises._evaluation_kept_epoch(losses, patience) - 1,
     "Epochs are numbered from 1"),
    ("distributed.shard_indices", lambda n, world, rank, epoch, seed=0, drop_last=False:
     _hand_shards(n, world, rank, 0, seed, drop_last), "That is the order of epoch 0"),
])
def test_a_hidden_failure_names_the_mistake_without_the_input(name, mistake, explanation):
    verdict = judge_answer(name, _right_where_shown(name, mistake))
    assert verdict.status == FAILED
    assert verdict.message.startswith("passes the cases shown, but gives a wrong result on other inputs")
    assert f"not only for the examples. {explanation}" in verdict.message, verdict.message
    hidden = exercises.EXERCISES[name].hidden
    for case in hidden.draw(torch.Generator().manual_seed(exercises.HIDDEN_SEED)):
        assert case.label not in verdict.message


def test_a_crash_on_a_hidden_input_does_not_show_the_input():
    def crashes_on_large_batches(num_samples, batch_size, drop_last=False):
        if batch_size > 64:
            raise ValueError("too large")
        return len(range(0, num_samples - batch_size + 1 if drop_last else num_samples, batch_size))

    verdict = judge_answer("data.batches_per_epoch", crashes_on_large_batches)
    assert verdict.status == FAILED
    assert verdict.message.startswith("on an input that the check does not show, the answer raised ValueError: "
                                      "too large"), verdict.message


# --- A starter docstring states the task, never its answer ------------------------------------


def _solution_docstrings(notebook: str) -> dict[str, str]:
    import ast

    found = {}
    for cell in nbformat.read(ROOT / "book" / f"{notebook}.ipynb", as_version=4).cells:
        if "solution" in cell.metadata.get("tags", []):
            for node in ast.parse(cell.source).body:
                if isinstance(node, ast.FunctionDef):
                    found[node.name] = ast.get_docstring(node)
    return found


@pytest.mark.parametrize("notebook", ["autograd", "data", "training", "evaluation"])
def test_a_solutions_docstring_states_the_task_not_its_formula(notebook):
    # The student edition keeps each solution's docstring as the statement of the task, so it
    # says what the function takes and returns, never how to compute it.
    giveaways = ["ceil", "floor", "diagonal", "row sums", "zero the gradients", "TP", "p_i - t_i",
                 "kernel_size - 1"]
    docstrings = _solution_docstrings(notebook)
    assert docstrings
    for function, docstring in docstrings.items():
        assert not re.search(r"[=*/+]", docstring), (function, docstring)  # no formula
        assert not [g for g in giveaways if g in docstring], (function, docstring)


def test_the_mean_loss_check_leaves_the_learners_random_state_alone():
    from helpers.exercises import _training_mean_loss_setup

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    _training_mean_loss_setup()
    assert torch.equal(torch.rand(3), expected)


# Found by mutation testing: each test below fails on a small, plausible change to the code.


@pytest.mark.parametrize("got, expected, message", [
    (1.0, 1.0005, "expected 1.0005, got 1"),
    (True, 1.0, "expected a number, got bool"),
    ([1.0], [1.0, 2.0], "expected a list of 2 items"),
    ((1, 2, 3), (1, 2), "expected a tuple of 2 items"),
    (1, True, "expected True, got 1"),
])
def test_compare_is_strict_about_tolerance_bools_and_lengths(got, expected, message):
    with pytest.raises(exercises._Mismatch) as err:
        compare(got, expected)
    assert message in str(err.value)


@pytest.mark.parametrize("got", [False, torch.tensor(False)])
def test_a_bool_for_a_count_is_told_to_return_a_number(got):
    # requires_grad is a bool: a natural shortcut for "1 if the leaf needs a gradient".
    with pytest.raises(exercises._Mismatch) as err:
        compare(got, 0)
    assert "expected the int 0, got" in str(err.value)
    assert "return a number, not a bool" in str(err.value)


def test_compare_accepts_an_equal_bool():
    compare(True, True)
    compare(False, False)


def test_a_verdict_shows_small_tensors_in_short_numbers_and_large_ones_by_shape():
    with pytest.raises(exercises._Mismatch) as err:
        compare(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 3.123456789]))
    assert "expected tensor([1.0, 3.12346]) of shape (2,), got tensor([1.0, 2.0]) of shape (2,)" in str(err.value)
    with pytest.raises(exercises._Mismatch) as err:
        compare(torch.zeros(8), torch.ones(8))
    assert "tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]) of shape (8,)" in str(err.value)
    with pytest.raises(exercises._Mismatch) as err:
        compare(torch.zeros(9), torch.ones(9))
    assert str(err.value) == "the answer, a tensor of shape (9,), differs most at [0]: expected 1, got 0"
    with pytest.raises(exercises._Mismatch) as err:
        compare("x" * 100, "y")
    assert f"got '{'x' * 76}..." in str(err.value) and "x" * 80 not in str(err.value)


def test_a_not_implemented_error_from_a_pytorch_operation_in_cpp_is_a_crash_not_starter_code():
    # Raised by PyTorch's C++ code, it shows as the learner's own line, which is not a `raise`.
    def uses_an_operation_sparse_tensors_lack(t):
        return int(torch.zeros(2, 2).to_sparse().max())

    verdict = judge_answer("dynamic_graph.count_leaves", uses_an_operation_sparse_tensors_lack)
    assert verdict.status == FAILED
    assert "the answer raised NotImplementedError: Could not run 'aten::max'" in verdict.message


def test_starter_code_whose_source_cannot_be_read_gets_the_benefit_of_the_doubt():
    namespace = {}
    exec(compile("def starter(t):\n    raise NotImplementedError\n", "<no source>", "exec"), namespace)
    assert judge_answer("dynamic_graph.count_leaves", namespace["starter"]).status == NOT_DONE


def test_pythons_frozen_modules_count_as_library_code():
    assert exercises._in_course_or_library("<frozen importlib._bootstrap>")


def test_a_short_message_of_several_lines_keeps_its_first_line_and_says_it_was_cut():
    def raises_two_lines(t):
        raise ValueError("first line\nsecond line")

    verdict = judge_answer("dynamic_graph.count_nodes", raises_two_lines)
    assert "the answer raised ValueError: first line ... (line" in verdict.message


def test_an_answer_that_changes_its_tensor_inputs_in_place_is_still_told_its_mistake():
    # Adam without bias correction, updating the averages in place as torch.optim does: the check
    # passes it copies, so it names the slip (the first case gives the same zeros for both averages).
    def adam_in_place(param, grad, exp_avg, exp_avg_sq, step, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                      weight_decay=0.0):
        beta1, beta2 = betas
        grad = grad + weight_decay * param
        exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        return param - lr * exp_avg / (exp_avg_sq.sqrt() + eps), exp_avg, exp_avg_sq

    verdict = judge_answer("optimizers.adam_step", adam_in_place)
    assert verdict.status == FAILED
    assert verdict.message.startswith("on the first step (step=1, averages at zero), item 0 (the new param):")
    assert "The update matches Adam WITHOUT bias correction" in verdict.message


def test_an_answer_that_empties_its_list_input_is_still_told_its_mistake():
    def stopping_epoch_consuming_the_list(val_losses, patience):
        best, waited, epoch = float("inf"), 0, 0
        while val_losses:  # pops the learner's own argument: the check must have passed a copy
            loss, epoch = val_losses.pop(0), epoch + 1
            best, waited = (loss, 0) if loss < best else (best, waited + 1)
            if waited == patience:
                break
        return epoch  # the epoch training stops at, not the one whose weights are kept

    verdict = judge_answer("evaluation.early_stopping_epoch", stopping_epoch_consuming_the_list)
    assert verdict.status == FAILED
    assert "That is the epoch at which training stops" in verdict.message


def test_hidden_cases_are_drawn_from_the_seed_asked_for():
    seeds = []
    hidden = exercises.HiddenCases(draw=lambda generator: seeds.append(generator.initial_seed()) or [],
                                   expected=lambda: None, rule="anything")
    assert exercises.hidden_failure(print, hidden) is None
    assert exercises.hidden_failure(print, hidden, seed=123) is None
    assert seeds == [exercises.HIDDEN_SEED, 123]


def test_hidden_cases_are_compared_with_their_own_tolerance():
    hidden = exercises.HiddenCases(draw=lambda generator: [Case((1.0,), "one")],
                                   expected=lambda x: x, rule="anything", atol=0.1)
    assert exercises.hidden_failure(lambda x: x + 0.01, hidden) is None
    assert exercises.hidden_failure(lambda x: x + 0.5, hidden) is not None


def test_a_mistake_finder_that_cannot_read_a_result_leaves_the_next_one_its_turn():
    def cannot_read(got, want):
        raise TypeError("not a tensor")

    explain = exercises.first_matching([(cannot_read, "first"), (lambda got, want: True, "second")])
    assert explain(1, 2) == "second"


def test_a_passing_answer_is_told_on_how_many_inputs():
    verdict = judge_answer("dynamic_graph.count_nodes", _count_nodes_by_walking)
    assert verdict.status == PASSED
    assert verdict.message == "passed on all 6 inputs"


def test_a_result_of_the_wrong_shape_is_not_named_as_a_mistake_that_broadcasts_to_it():
    def bce_summed_of_shape_1(z, y):
        return torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="sum").reshape(1)

    verdict = judge_answer("losses.bce_with_logits", bce_summed_of_shape_1)
    assert verdict.status == FAILED and "expected shape (), got shape (1,)" in verdict.message
    assert "That is the sum over the batch" not in verdict.message


def test_a_mistaken_formula_that_cannot_take_the_cases_arguments_is_not_named():
    # Wrong only with ignore_index given: the mistakes written for (z, y) alone cannot be
    # computed on that case, and must not be named.
    def wrong_with_an_ignore_index(z, y, ignore_index=-100):
        loss = torch.nn.functional.cross_entropy(z, y, ignore_index=ignore_index)
        return loss if ignore_index == -100 else 1.5 * loss

    verdict = judge_answer("losses.cross_entropy", wrong_with_an_ignore_index)
    assert verdict.status == FAILED
    assert verdict.message.startswith("on targets [0, 2, 0, 1] and ignore_index=0, expected")
    assert verdict.message.endswith(")")  # "(largest difference ...)", and no mistake named after it


def test_cross_entropy_whose_padding_rows_reach_the_softmax_fails_on_its_nan_gradient():
    # Its values are right (the padding is indexed away after the log-softmax), but the softmax
    # of a padding row of inf is NaN, and so is that row's gradient: the chapter warns of it.
    def indexes_after_the_log_softmax(logits, targets, ignore_index=-100):
        kept = targets != ignore_index
        log_p = torch.log_softmax(logits, dim=-1)[kept]
        return -log_p[torch.arange(len(log_p)), targets[kept]].mean()

    def builtin(logits, targets, ignore_index=-100):
        return torch.nn.functional.cross_entropy(logits, targets, ignore_index=ignore_index)

    for answer in (indexes_after_the_log_softmax, builtin):
        verdict = judge_answer("losses.cross_entropy", answer)
        assert verdict.status == FAILED, answer.__name__
        assert verdict.message.startswith("the values are right, but on logits [[0.5, 2.0, -1.0], [inf, 0.0, 0.0]")
        assert "[nan, nan, nan]" in verdict.message and "Index the kept rows out of the logits first" in verdict.message

    def detached(logits, targets, ignore_index=-100):
        return _reference_cross_entropy(logits, targets, ignore_index).detach()

    verdict = judge_answer("losses.cross_entropy", detached)
    assert verdict.status == FAILED and "not connected to the logits' graph" in verdict.message


def test_a_bool_for_a_number_of_batches_is_told_to_return_an_int():
    verdict = judge_answer("data.batches_per_epoch", lambda num_samples, batch_size, drop_last=False: True)
    assert verdict.status == FAILED
    assert verdict.message.endswith("Return the number of batches as an int")


def test_a_mean_loss_off_by_half_a_percent_fails():
    def mean_loss_slightly_off(model, loader, loss_fn):
        model.eval()
        with torch.no_grad():
            total = sum(loss_fn(model(x), y).item() * len(y) for x, y in loader)
        model.train()
        return 1.005 * total / sum(len(y) for _, y in loader)

    verdict = judge_answer("training.mean_loss", mean_loss_slightly_off)
    assert verdict.status == FAILED
    assert verdict.message.startswith("on a model with dropout and a loader of 10 examples in batches of 4, 4 and 2, "
                                      "expected")


def test_a_sigmoid_built_on_a_copy_of_v_is_told_its_parent_must_be_v():
    import math

    from helpers.engine import Value

    def sigmoid_on_a_copy(v):
        copy = Value(v.data)
        out = Value(1 / (1 + math.exp(-copy.data)), (copy,), "sigmoid")

        def backward(grad):
            copy.grad += out.data * (1 - out.data) * grad
        out._backward = backward
        return out

    verdict = judge_answer("autograd.sigmoid_op", sigmoid_on_a_copy)
    assert verdict.status == FAILED and "whose only parent is v" in verdict.message


def test_a_train_step_wrong_from_its_first_step_is_not_told_about_earlier_steps():
    def steps_twice(model, optimizer, inputs, targets):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        optimizer.step()
        optimizer.step()
        return loss.item()

    verdict = judge_answer("autograd.train_step", steps_twice)
    assert verdict.status == FAILED
    assert verdict.message.startswith("after step 1 the parameters differ from one gradient-descent step")


def test_the_scale_hint_is_given_only_when_the_gradient_was_not_scaled():
    import math

    from helpers.engine import Value

    def sigmoid_scaling_twice(v):
        s = 1 / (1 + math.exp(-v.data))
        out = Value(s, (v,), "sigmoid")

        def backward(grad):
            v.grad += s * (1 - s) * grad * grad
        out._backward = backward
        return out

    verdict = judge_answer("autograd.sigmoid_op", sigmoid_scaling_twice)
    assert verdict.status == FAILED and verdict.message.startswith("on sigmoid(v) * 3, v.grad is")
    assert "multiply the local derivative" not in verdict.message


def test_an_unpadded_shard_is_told_its_length_without_the_repetition_advice():
    def shard_without_padding(num_examples, world_size, rank, epoch, seed=0, drop_last=False):
        generator = torch.Generator().manual_seed(seed + epoch)
        return torch.randperm(num_examples, generator=generator).tolist()[rank::world_size]

    verdict = judge_answer("distributed.shard_indices", shard_without_padding)
    assert verdict.status == FAILED
    assert verdict.message == ("on 10 examples, 3 ranks, rank 2, epoch 0 (10 is not a multiple of 3), "
                               "expected 4 indices, got 3")


def test_a_learning_rate_of_zero_is_told_it_must_be_positive():
    verdict = judge_answer("optimizers.learning_rate", lambda a, b: 0.0)
    assert verdict.status == FAILED
    assert verdict.message == "for a=1.0, b=20.0, the answer gave lr=0: a learning rate must be positive"


@pytest.mark.parametrize("result, kind", [
    (lambda: torch.empty(3, device="meta"), "a dense tensor on meta"),
    (lambda: torch.ones(2).to_sparse(), "a sparse_coo tensor on cpu"),
])
def test_a_result_that_cannot_be_compared_fails_the_answer_not_the_check(result, kind):
    # Not a "check error" (a bug of the course): the answer returned something unusual.
    verdict = judge_answer("data.batches_per_epoch", lambda num_samples, batch_size, drop_last=False: result())
    assert verdict.status == FAILED
    assert verdict.message.startswith(f"on 10 samples in batches of 4, the answer returned {kind}, which cannot be "
                                      f"compared with the expected result, a value of type int (")
    assert verdict.message.endswith("): return a value of type int")


def test_a_check_whose_own_result_cannot_be_compared_is_a_check_error_not_the_answers_fault(monkeypatch):
    exercise = exercises.EXERCISES["data.batches_per_epoch"]
    broken = dataclasses.replace(exercise, judge=exercises.judge_cases(
        lambda: [Case((10, 4), "10 samples")], lambda n, b: torch.ones(2).to_sparse()), hidden=None)
    monkeypatch.setitem(exercises.EXERCISES, "data.batches_per_epoch", broken)
    verdict = judge_answer("data.batches_per_epoch", lambda n, b: torch.ones(2).to_sparse())
    assert verdict.status == CHECK_ERROR


def test_inference_mode_in_the_learners_notebook_does_not_change_a_verdict():
    with torch.inference_mode():
        assert judge_answer("losses.cross_entropy", _reference_cross_entropy).status == PASSED
        assert torch.is_inference_mode_enabled()


def test_a_notebook_that_turned_gradients_off_gets_the_same_verdicts():
    # A learner's `torch.set_grad_enabled(False)` (for inference) must not fail right answers,
    # pass wrong ones, or break the checks that take gradients.
    torch.set_grad_enabled(False)
    try:
        for name, answer in _reference_answers().items():
            assert judge_answer(name, answer).status == PASSED, name
        assert judge_answer("dynamic_graph.count_nodes", lambda t: 0).status == FAILED
        assert not torch.is_grad_enabled()  # the learner's setting is left as it was
    finally:
        torch.set_grad_enabled(True)


def test_an_error_in_backward_through_the_answers_result_is_the_answers_not_the_checks():
    import math

    from helpers.engine import Value

    def sigmoid_micrograd_style(v):  # micrograd's closure takes no argument; this engine passes the gradient
        s = 1 / (1 + math.exp(-v.data))
        out = Value(s, (v,), "sigmoid")

        def backward():
            v.grad += s * (1 - s) * out.grad
        out._backward = backward
        return out

    verdict = judge_answer("autograd.sigmoid_op", sigmoid_micrograd_style)
    assert verdict.status == FAILED and "the closure takes that one argument" in verdict.message, verdict.message

    def bce_changing_a_saved_tensor(logits, targets):
        shrink = torch.exp(-logits.abs())
        shrink += 1  # exp saved its output for the backward pass
        return (logits.clamp(min=0) - logits * targets + shrink.log()).mean()

    verdict = judge_answer("losses.bce_with_logits", bce_changing_a_saved_tensor)
    assert verdict.status == FAILED, verdict.message
    assert "backward() through the answer's result raised RuntimeError" in verdict.message
    assert "changed in place" in verdict.message


def test_a_cross_entropy_that_changes_its_targets_in_place_is_judged_on_its_own_copy():
    def cross_entropy_reusing_targets(logits, targets, ignore_index=-100):
        keep = targets != ignore_index
        targets[~keep] = 0  # out of the way of the indexing below
        log_p = torch.log_softmax(logits[keep], dim=-1)
        return -log_p[torch.arange(len(log_p)), targets[keep]].mean()

    verdict = judge_answer("losses.cross_entropy", cross_entropy_reusing_targets)
    assert verdict.status == PASSED, verdict.message


def test_a_mean_loss_through_model_forward_is_still_checked_for_eval_and_no_grad():
    def eval_without_no_grad(model, loader, loss_fn):
        model.eval()
        total = sum(loss_fn(model.forward(x), y).item() * len(y) for x, y in loader)
        model.train()
        return total / len(loader.dataset)

    verdict = judge_answer("training.mean_loss", eval_without_no_grad)
    assert verdict.status == FAILED and "recorded a graph" in verdict.message, verdict.message


def test_a_learning_rate_may_be_any_real_number():
    from fractions import Fraction

    for kind in (np.float32, Fraction):
        verdict = judge_answer("optimizers.learning_rate", lambda a, b, k=kind: k(2) / k(a + b))
        assert verdict.status == PASSED, verdict.message


def test_a_wrong_count_of_another_integer_type_is_told_its_mistake_not_its_type():
    def batches_floor(num_samples, batch_size, drop_last=False):  # floor where a ceil is needed
        return torch.tensor(num_samples // batch_size)

    verdict = judge_answer("data.batches_per_epoch", batches_floor)
    assert verdict.status == FAILED and "the samples left over after the last full batch" in verdict.message
    assert "as an int" not in verdict.message, verdict.message


@pytest.mark.parametrize("wrap", [lambda n: torch.tensor([n]), lambda n: float(n)])
def test_a_right_count_that_is_not_an_int_is_told_once_to_return_an_int(wrap):
    import math

    def batches(num_samples, batch_size, drop_last=False):
        return wrap(num_samples // batch_size if drop_last else math.ceil(num_samples / batch_size))

    verdict = judge_answer("data.batches_per_epoch", batches)
    assert verdict.status == FAILED and verdict.message.count("as an int") == 1, verdict.message
    assert "the value is right" in verdict.message


def test_an_error_in_the_answers_own_backward_closure_shows_its_line():
    import math

    from helpers.engine import Value

    def sigmoid_with_a_typo(v):
        s = 1 / (1 + math.exp(-v.data))
        out = Value(s, (v,), "sigmoid")

        def backward(grad):
            v.grad += s * (1 - s) * grd  # noqa: F821, the typo under test
        out._backward = backward
        return out

    verdict = judge_answer("autograd.sigmoid_op", sigmoid_with_a_typo)
    assert verdict.status == FAILED, verdict.message
    assert "raised NameError: name 'grd' is not defined (line" in verdict.message
    assert "v.grad += s * (1 - s) * grd" in verdict.message


def test_the_engines_hint_about_backward_closures_is_not_given_for_a_torch_function():
    class BCE(torch.autograd.Function):
        @staticmethod
        def forward(ctx, logits, targets):
            ctx.save_for_backward(logits, targets)
            return torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)

        @staticmethod
        def backward(ctx):  # forgot the incoming gradient
            logits, targets = ctx.saved_tensors
            return (torch.sigmoid(logits) - targets) / len(targets), None

    verdict = judge_answer("losses.bce_with_logits", BCE.apply)
    assert verdict.status == FAILED and "backward() through the answer's result raised TypeError" in verdict.message
    assert "Value.tanh" not in verdict.message, verdict.message


def test_a_bce_that_changes_its_targets_in_place_is_judged_on_its_own_copy():
    def bce_clearing_targets(logits, targets):
        labels = targets.clone()
        loss = (torch.nn.functional.softplus(logits) - logits * labels).mean()
        targets.zero_()  # a slip that leaves the caller's targets changed: the check must not read them
        return loss

    verdict = judge_answer("losses.bce_with_logits", bce_clearing_targets)
    assert verdict.status == PASSED, verdict.message


def test_a_cross_entropy_changing_a_saved_tensor_is_failed_with_the_in_place_advice():
    def cross_entropy_in_place(logits, targets, ignore_index=-100):
        keep = targets != ignore_index
        shifted = logits[keep] - 0
        shifted -= shifted.amax(-1, keepdim=True)  # amax saved its input for the backward pass
        log_p = shifted - shifted.exp().sum(-1, keepdim=True).log()
        return -log_p[torch.arange(len(log_p)), targets[keep]].mean()

    verdict = judge_answer("losses.cross_entropy", cross_entropy_in_place)
    assert verdict.status == FAILED and "changed in place" in verdict.message, verdict.message


def test_a_mean_loss_run_layer_by_layer_is_still_checked_for_eval_and_no_grad():
    def layer_by_layer(model, loader, loss_fn, switch_to_eval=True, without_grad=False):
        if switch_to_eval:
            model.eval()
        total = 0.0
        with torch.set_grad_enabled(not without_grad):
            for x, y in loader:
                for layer in model:
                    x = layer.forward(x)  # passes by every layer's hooks
                total += loss_fn(x, y).item() * len(y)
        model.train()
        return total / len(loader.dataset)

    verdict = judge_answer("training.mean_loss", layer_by_layer)
    assert verdict.status == FAILED and "recorded a graph" in verdict.message, verdict.message
    verdict = judge_answer("training.mean_loss",
                           lambda *a: layer_by_layer(*a, switch_to_eval=False, without_grad=True))
    assert verdict.status == FAILED and "call model.eval()" in verdict.message, verdict.message


# --- A review's wrong answers (each test fails on the checks as they were before it) ---------


def _accumulate_by_micro_batch(model, loss_fn, inputs, targets, micro_batches):
    model.zero_grad()
    for x, y in zip(inputs.chunk(micro_batches), targets.chunk(micro_batches)):
        (loss_fn(model(x), y) / micro_batches).backward()
    return [p.grad.clone() for p in model.parameters()]


def _accumulate_with_one_backward(model, loss_fn, inputs, targets, micro_batches):
    model.zero_grad()
    total = 0
    for x, y in zip(inputs.chunk(micro_batches), targets.chunk(micro_batches)):
        total = total + loss_fn(model(x), y) / micro_batches
    total.backward()  # every micro-batch's graph stays alive until here
    return [p.grad.clone() for p in model.parameters()]


def _accumulate_forwards_first(model, loss_fn, inputs, targets, micro_batches):
    model.zero_grad()
    losses = [loss_fn(model(x), y) / micro_batches
              for x, y in zip(inputs.chunk(micro_batches), targets.chunk(micro_batches))]
    for loss in losses:
        loss.backward()
    return [p.grad.clone() for p in model.parameters()]


def _accumulate_scaled_after_and_logged(model, loss_fn, inputs, targets, micro_batches):
    model.zero_grad()
    for x, y in zip(inputs.chunk(micro_batches), targets.chunk(micro_batches)):
        loss_fn(model(x), y).backward()
        with torch.no_grad():  # a loss to print: no graph, no backward
            loss_fn(model(x), y)
    return [p.grad / micro_batches for p in model.parameters()]


def _accumulate_by_autograd_grad(model, loss_fn, inputs, targets, micro_batches):
    total = [torch.zeros_like(p) for p in model.parameters()]
    for x, y in zip(inputs.chunk(micro_batches), targets.chunk(micro_batches)):
        grads = torch.autograd.grad(loss_fn(model(x), y) / micro_batches, list(model.parameters()))
        total = [t + g for t, g in zip(total, grads)]
    return total


def test_accumulation_needs_a_backward_per_micro_batch_and_its_right_variants_pass():
    for answer in (_book_solutions()["distributed.accumulated_gradients"], _accumulate_by_micro_batch,
                   _accumulate_scaled_after_and_logged, _accumulate_by_autograd_grad):
        verdict = judge_answer("distributed.accumulated_gradients", answer)
        assert verdict.status == PASSED, (answer.__name__, verdict.message)
    verdict = judge_answer("distributed.accumulated_gradients", _accumulate_with_one_backward)
    assert verdict.status == FAILED
    assert verdict.message.startswith(
        "on 12 examples in 3 micro-batches of 4, the model ran 3 forward passes, but backward() ran "
        "once, only after the last one: call backward() on each micro-batch's loss before the next "
        "forward pass"), verdict.message
    verdict = judge_answer("distributed.accumulated_gradients", _accumulate_forwards_first)
    assert verdict.status == FAILED and "backward() ran 3 times, all after the last one" in verdict.message


def test_accumulation_that_zeroes_inside_the_loop_is_told_only_the_last_micro_batch_is_left():
    def zeroes_every_time(model, loss_fn, inputs, targets, micro_batches):
        for x, y in zip(inputs.chunk(micro_batches), targets.chunk(micro_batches)):
            model.zero_grad()
            (loss_fn(model(x), y) / micro_batches).backward()
        return [p.grad.clone() for p in model.parameters()]

    verdict = judge_answer("distributed.accumulated_gradients", zeroes_every_time)
    assert verdict.status == FAILED
    assert "only the last micro-batch's gradient is left" in verdict.message, verdict.message


def test_a_train_step_that_ignores_its_optimizer_fails():
    import torch.nn.functional as F

    def by_hand(model, optimizer, inputs, targets):  # the same numbers as the check's SGD(lr=0.1)
        model.zero_grad()
        loss = F.mse_loss(model(inputs), targets)
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.1 * p.grad
        return loss.item()

    def with_a_closure(model, optimizer, inputs, targets):  # right: step(closure) is a step too
        def closure():
            optimizer.zero_grad()
            loss = F.mse_loss(model(inputs), targets)
            loss.backward()
            return loss
        return optimizer.step(closure).item()

    verdict = judge_answer("autograd.train_step", by_hand)
    assert verdict.status == FAILED
    assert verdict.message == ("on batch 1, the parameters moved, but optimizer.step() was never called: "
                               "update them with the optimizer that train_step is given")
    assert judge_answer("autograd.train_step", with_a_closure).status == PASSED


def _per_class_precision_recall(y_true, y_pred, num_classes):
    y_true, y_pred = torch.as_tensor(y_true), torch.as_tensor(y_pred)
    pairs = []
    for k in range(num_classes):
        tp = ((y_pred == k) & (y_true == k)).sum().item()
        predicted, actual = (y_pred == k).sum().item(), (y_true == k).sum().item()
        pairs.append((tp / predicted if predicted else 0.0, tp / actual if actual else 0.0))
    return pairs


def _macro_recall(y_true, y_pred, num_classes):
    return sum(r for _, r in _per_class_precision_recall(y_true, y_pred, num_classes)) / num_classes


def _macro_precision(y_true, y_pred, num_classes):
    return sum(p for p, _ in _per_class_precision_recall(y_true, y_pred, num_classes)) / num_classes


def _mean_of_precision_and_recall(y_true, y_pred, num_classes):
    pairs = _per_class_precision_recall(y_true, y_pred, num_classes)
    return sum((p + r) / 2 for p, r in pairs) / num_classes


def test_macro_f1_built_from_precision_and_recall_is_not_blamed_on_a_harmonic_mean_it_did_not_take():
    # On the chapter's example the macro precision equals the macro recall: the message says so
    # rather than naming one of the four answers that give that number.
    for answer in (_macro_recall, _macro_precision, _mean_of_precision_and_recall):
        verdict = judge_answer("evaluation.macro_f1", answer)
        assert verdict.status == FAILED
        assert verdict.message.startswith("on the chapter's 10 examples of 3 classes, expected 0.57381, got "
                                          "0.583333. Here the macro precision equals the macro recall"), \
            verdict.message
    # Where they differ (class 2 is never predicted), each is named.
    (y_true, y_pred, k), = [c.args for c in exercises._evaluation_label_cases()[2:3]]
    want = exercises._evaluation_true_macro_f1(y_true, y_pred, k)
    for answer, phrase in [(_macro_recall, "That is the macro recall"),
                           (_macro_precision, "That is the macro precision"),
                           (_mean_of_precision_and_recall, "That is the plain mean of precision and recall")]:
        explanation = exercises._evaluation_macro_f1_mistake(answer(y_true, y_pred, k), want, y_true, y_pred, k)
        assert explanation.startswith(phrase), (answer.__name__, explanation)


def _early_stopping(stop_when, reset=True):
    def early_stopping_epoch(val_losses, patience):
        best, best_epoch, waited = float("inf"), 0, 0
        for epoch, loss in enumerate(val_losses, start=1):
            if loss < best:
                best, best_epoch, waited = loss, epoch, 0 if reset else waited
            else:
                waited += 1
                if stop_when(waited, patience):
                    break
        return best_epoch
    return early_stopping_epoch


@pytest.mark.parametrize("answer, phrase", [
    (_early_stopping(lambda waited, patience: waited > patience), "stopping one epoch late"),
    (_early_stopping(lambda waited, patience: waited >= patience - 1), "stopping one epoch early"),
    (_early_stopping(lambda waited, patience: waited == patience, reset=False),
     "must start again from 0 at every improvement"),
])
def test_early_stopping_one_epoch_late_or_early_or_never_reset_is_named(answer, phrase):
    verdict = judge_answer("evaluation.early_stopping_epoch", answer)
    assert verdict.status == FAILED and phrase in verdict.message, verdict.message


def test_nesterov_with_the_buffer_from_before_the_update_is_not_told_nesterov_was_ignored_alone():
    def nesterov_with_the_old_buffer(param, grad, buffer, lr, momentum, dampening=0.0, nesterov=False):
        old = torch.zeros_like(grad) if buffer is None else buffer
        buffer = grad.clone() if buffer is None else momentum * buffer + (1 - dampening) * grad
        return param - lr * (grad + momentum * old if nesterov else buffer), buffer

    verdict = judge_answer("optimizers.momentum_step", nesterov_with_the_old_buffer)
    assert verdict.status == FAILED
    assert "or uses the buffer from before this step's update" in verdict.message, verdict.message


def test_compare_names_where_a_large_tensor_differs_most_and_where_it_holds_an_inf():
    expected, got = torch.zeros(2, 3, 4), torch.zeros(2, 3, 4)
    got[0, 0, 0], got[1, 0, 2] = 1.0, -5.0
    with pytest.raises(exercises._Mismatch) as err:
        compare(got, expected)
    assert str(err.value) == ("the answer, a tensor of shape (2, 3, 4), differs most at [1, 0, 2]: "
                              "expected 0, got -5"), str(err.value)
    with pytest.raises(exercises._Mismatch) as err:
        compare(got.double(), expected)
    assert str(err.value).endswith("got -5 (its dtype is torch.float64, expected torch.float32)")
    got[1, 2, 3] = -float("inf")
    with pytest.raises(exercises._Mismatch) as err:
        compare(got, expected)
    assert str(err.value) == ("the answer contains -inf where finite values were expected, first at "
                              "[1, 2, 3] (expected 0 there): a tensor of shape (2, 3, 4) and dtype torch.float32")
    with pytest.raises(exercises._Mismatch) as err:  # where the tensor is shown, the inf is seen
        compare(torch.tensor([float("inf"), 1.0]), torch.ones(2))
    assert "got tensor([inf, 1.0]) of shape (2,) (largest difference" in str(err.value)


def test_the_right_value_returned_as_a_python_number_is_told_to_return_the_tensor():
    verdict = judge_answer("losses.mean_squared_error", lambda p, t: ((p - t) ** 2).mean().item())
    assert verdict.status == FAILED
    assert verdict.message.endswith("expected a tensor, got float 0.375: the value is right, but return it "
                                    "as a tensor (leave out .item() or float())"), verdict.message
    with pytest.raises(exercises._Mismatch) as err:  # a wrong value is not told it is right
        compare(0.5, torch.tensor(0.375))
    assert str(err.value) == "expected a tensor, got float 0.5"


def test_cross_entropy_of_probabilities_is_told_to_take_the_logits():
    def softmax_first(logits, targets, ignore_index=-100):
        kept = targets != ignore_index
        log_p = torch.log_softmax(torch.softmax(logits[kept], dim=-1), dim=-1)
        return -log_p[torch.arange(len(log_p)), targets[kept]].mean()

    verdict = judge_answer("losses.cross_entropy", softmax_first)
    assert verdict.status == FAILED and "cross-entropy takes the logits themselves" in verdict.message


@pytest.mark.parametrize("answer, phrase", [
    (lambda X, t, w, b: (X.T @ (torch.sigmoid(X @ w + b) - t), (torch.sigmoid(X @ w + b) - t).sum()),
     "Those are the gradients of the sum of the losses"),
    (lambda X, t, w, b: (X.T @ (t - torch.sigmoid(X @ w + b)) / len(t), (t - torch.sigmoid(X @ w + b)).mean()),
     "The sign is flipped"),
    (lambda X, t, w, b: (lambda e: (X.T @ e / len(t), e.mean()))(
        (torch.sigmoid(X @ w + b) - t) * torch.sigmoid(X @ w + b) * (1 - torch.sigmoid(X @ w + b))),
     "one factor sigmoid'(z_i) = p_i (1 - p_i) too many"),
    (lambda X, t, w, b: (X.T @ (torch.sigmoid(X @ w) - t) / len(t), (torch.sigmoid(X @ w) - t).mean()),
     "The bias b is left out of the logits"),
])
def test_logistic_grad_names_the_usual_slips(answer, phrase):
    verdict = judge_answer("autograd.logistic_grad", answer)
    assert verdict.status == FAILED
    assert verdict.message.startswith("on 4 points in 2 dimensions, item 0 (the gradient of w): expected tensor(")
    assert phrase in verdict.message, verdict.message


def _mean_loss_that_switches_gradients_off_for_good(model, loader, loss_fn):
    model.eval()
    torch.set_grad_enabled(False)  # never switched back on
    total = sum(loss_fn(model(x), y).item() * len(y) for x, y in loader)
    model.train()
    return total / len(loader.dataset)


def _mean_loss_as_a_tensor(model, loader, loss_fn):
    model.eval()
    with torch.no_grad():
        total = sum(loss_fn(model(x), y) * len(y) for x, y in loader)  # no .item(): a tensor
    model.train()
    return total / len(loader.dataset)


def _macro_f1_as_a_tensor(y_true, y_pred, num_classes):
    y_true, y_pred = torch.as_tensor(y_true), torch.as_tensor(y_pred)
    scores = []
    for k in range(num_classes):
        tp = ((y_pred == k) & (y_true == k)).sum()
        wrong = ((y_pred == k) != (y_true == k)).sum()  # false positives and false negatives
        scores.append(2 * tp / (2 * tp + wrong) if 2 * tp + wrong > 0 else torch.tensor(0.0))
    return torch.stack(scores).mean()


@pytest.mark.parametrize("name, answer, phrase", [
    ("training.mean_loss", _mean_loss_as_a_tensor, "expected a Python float, got tensor("),
    ("evaluation.macro_f1", _macro_f1_as_a_tensor,
     "the value is right, but return it as a Python float (.item() or float(...))"),
])
def test_a_right_value_in_a_tensor_where_a_python_float_is_asked_fails_and_says_so(name, answer, phrase):
    verdict = judge_answer(name, answer)
    assert verdict.status == FAILED
    assert phrase in verdict.message
    assert verdict.message.endswith("float(...))")  # no slip named: the value is right


def test_a_mean_loss_that_leaves_gradients_switched_off_fails_and_the_notebooks_state_is_kept():
    verdict = judge_answer("training.mean_loss", _mean_loss_that_switches_gradients_off_for_good)
    assert verdict.status == FAILED
    assert "gradients were still switched off after the function returned" in verdict.message
    assert torch.is_grad_enabled()  # the check gives the notebook its own setting back


def test_the_log_softmax_overflow_advice_names_the_idea_not_the_formula():
    verdict = judge_answer("losses.log_softmax",
                           lambda z: z - torch.log(torch.exp(z).sum(dim=-1, keepdim=True)))
    assert verdict.status == FAILED
    assert "shift each row by its maximum first" in verdict.message
    assert "log(sum(exp(z - m)))" not in verdict.message


def _shifted_logits(z):
    return z - z.max(dim=-1, keepdim=True).values


# --- Wrong answers a review found passing: each must fail, with what to change -----------------


def _mse_in_place(prediction, target):
    prediction -= target  # the caller's tensor, a model's output, is overwritten
    return (prediction ** 2).mean()


def _log_softmax_in_place(z):
    z -= z.amax(-1, keepdim=True)  # amax saved z for the backward pass
    z -= torch.log(torch.exp(z).sum(-1, keepdim=True))
    return z


def _log_softmax_in_numpy(z):
    shifted = z.numpy() - z.numpy().max(-1, keepdims=True)
    return torch.from_numpy(shifted - np.log(np.exp(shifted).sum(-1, keepdims=True)))


def _smoothing_with(log_probabilities, in_place=False):
    def smoothed(logits, targets, smoothing, ignore_index=-100):
        if in_place:
            logits -= logits.amax(1, keepdim=True)
        kept = targets != ignore_index
        logits, targets = logits[kept], targets[kept]
        q = (1 - smoothing) * torch.nn.functional.one_hot(targets, logits.shape[1]) + smoothing / logits.shape[1]
        return -(q * log_probabilities(logits)).sum(1).mean()
    return smoothed


def _smoothing_by_the_courses_cross_entropy(logits, targets, smoothing, ignore_index=-100):
    from helpers.losses import cross_entropy

    kept = targets != ignore_index
    return cross_entropy(logits[kept], targets[kept], label_smoothing=smoothing)


def _logistic_loss(X, t):
    return lambda w, b: torch.nn.functional.binary_cross_entropy_with_logits(X @ w + b, t)


def _logistic_grad_by_jacfwd(X, t, w, b):
    with warnings.catch_warnings():  # PyTorch's own notice, at torch.func's first use
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
        return torch.func.jacfwd(_logistic_loss(X, t), argnums=(0, 1))(w, b)


def _logistic_grad_by_dual_numbers(X, t, w, b):
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        gw = torch.stack([fwAD.unpack_dual(_logistic_loss(X, t)(fwAD.make_dual(w, e), b)).tangent
                          for e in torch.eye(len(w), dtype=w.dtype)])
        gb = fwAD.unpack_dual(_logistic_loss(X, t)(w, fwAD.make_dual(b, torch.ones_like(b)))).tangent
    return gw, gb


def _logistic_grad_by_finite_differences(X, t, w, b, h=1e-6):
    loss = _logistic_loss(X, t)
    gw = torch.stack([(loss(w + h * e, b) - loss(w - h * e, b)) / (2 * h) for e in torch.eye(len(w), dtype=w.dtype)])
    return gw, (loss(w, b + h) - loss(w, b - h)) / (2 * h)


def _logistic_grad_in_float32(X, t, w, b):  # the right formula, rounded to float32
    p = torch.sigmoid(X.float() @ w.float() + torch.as_tensor(b).float())
    return X.float().T @ (p - t.float()) / len(t), (p - t.float()).mean()


def _mean_loss_over_the_dataset(model, loader, loss_fn):  # wrong with drop_last or a sampler
    model.eval()
    with torch.no_grad():
        total = sum(loss_fn(model(x), y).item() * len(y) for x, y in loader)
    model.train()
    return total / len(loader.dataset)


def _mean_loss_of_cross_entropy(model, loader, loss_fn):  # loss_fn ignored
    model.eval()
    with torch.no_grad():
        sums = [(torch.nn.functional.cross_entropy(model(x), y, reduction="sum").item(), len(y)) for x, y in loader]
    model.train()
    return sum(total for total, _ in sums) / sum(count for _, count in sums)


def _mean_loss_summing(model, loader, loss_fn, restore=False):
    loss_fn.reduction = "sum"
    model.eval()
    with torch.no_grad():
        sums = [(loss_fn(model(x), y).item(), len(y)) for x, y in loader]
    model.train()
    if restore:
        loss_fn.reduction = "mean"
    return sum(total for total, _ in sums) / sum(count for _, count in sums)


def _accumulate_cross_entropy(model, loss_fn, inputs, targets, micro_batches, summed=False):  # loss_fn ignored
    model.zero_grad()
    for x, y in zip(inputs.chunk(micro_batches), targets.chunk(micro_batches)):
        if summed:
            (torch.nn.functional.cross_entropy(model(x), y, reduction="sum") / len(inputs)).backward()
        else:
            (torch.nn.functional.cross_entropy(model(x), y) / micro_batches).backward()
    return [p.grad.clone() for p in model.parameters()]


def _accumulate_into_grad_itself(model, loss_fn, inputs, targets, micro_batches):
    model.zero_grad()
    for x, y in zip(inputs.chunk(micro_batches), targets.chunk(micro_batches)):
        (loss_fn(model(x), y) / micro_batches).backward()
    return [p.grad for p in model.parameters()]  # no copies


def _adam_with_eps_squared_inside(param, grad, exp_avg, exp_avg_sq, step, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                                  weight_decay=0.0):
    beta1, beta2 = betas
    grad = grad + weight_decay * param
    m, v = beta1 * exp_avg + (1 - beta1) * grad, beta2 * exp_avg_sq + (1 - beta2) * grad**2
    return param - lr * (m / (1 - beta1**step)) / (v / (1 - beta2**step) + eps**2).sqrt(), m, v


def _momentum_on_grad_itself(param, grad, buffer, lr, momentum, dampening=0.0, nesterov=False):
    if buffer is None:
        buffer = grad  # no copy
    else:
        buffer.mul_(momentum).add_(grad, alpha=1 - dampening)
    return param - lr * (grad + momentum * buffer if nesterov else buffer), buffer


def _shards_by_reseeding(num_examples, world_size, rank, epoch, seed=0, drop_last=False):
    torch.manual_seed(seed + epoch)  # the learner's own generator, reseeded
    order = torch.randperm(num_examples).tolist()
    total = (num_examples // world_size if drop_last else -(-num_examples // world_size)) * world_size
    return [order[i % num_examples] for i in range(total)][rank::world_size]


def _log_softmax_by_hand(z):
    return _shifted_logits(z) - torch.log(torch.exp(_shifted_logits(z)).sum(dim=-1, keepdim=True))


REFUSED = "the answer called "


@pytest.mark.parametrize("name, answer, phrase", [
    ("training.conv_output_size", lambda size, k, stride=1, padding=0, dilation=1:
     (size - dilation * (k - 1) - 1) // stride + 1, "That leaves the padding out"),
    ("training.conv_output_size", lambda size, k, stride=1, padding=0, dilation=1:
     (size + padding - dilation * (k - 1) - 1) // stride + 1, "That pads one side only"),
    ("training.conv_output_size", lambda size, k, stride=1, padding=0, dilation=1:
     (size + 2 * padding - dilation * (k - 1) - 1) // stride, "That is one position short"),
    ("data.batches_per_epoch", lambda n, b, drop_last=False: n // b if drop_last else n // b + 1,
     "That counts one batch too many when the samples fill the batches exactly"),
    ("losses.bce_with_logits", lambda z, y: torch.nn.functional.binary_cross_entropy_with_logits(
        z, y, reduction="none"), "expected shape (), got shape (3,). The loss is one number"),
    ("data.tensor_mean_std", lambda images: torch.std_mean(images.float() / 255, dim=(0, 2, 3), correction=0),
     "Those are the std and the mean, in that order"),
    ("training.mean_loss", lambda model, loader, loss_fn: _mean_loss_by_sums(model, loader, loss_fn)
     * len(loader.dataset) / len(loader), "divides the sum of the losses by the number of batches"),
    # On the first case, a * 2, leaving out the leaf and leaving out the root both give 1.
    ("dynamic_graph.count_nodes", _nodes_without_the_leaves, "AccumulateGrad nodes included, each once"),
    ("dynamic_graph.count_nodes", _nodes_once_per_path, "That counts a node once for every path"),
    ("optimizers.momentum_step", _momentum_without_dampening, "dampening is ignored"),
    ("distributed.shard_indices", _shards_without_the_seed, "That is the order for seed 0"),
    # A log-softmax summed over every logit of the batch, or with m taken away twice, still takes
    # one number from each row; one summed down the columns takes a different amount from each.
    ("losses.log_softmax", lambda z: _shifted_logits(z) - torch.log(torch.exp(_shifted_logits(z)).sum()),
     "does not sum to 1 along the last dimension"),
    ("losses.log_softmax", lambda z: _shifted_logits(z) - torch.log(torch.exp(z).sum(dim=-1, keepdim=True)),
     "with the maximum m taken away once in all"),
    ("losses.log_softmax",
     lambda z: _shifted_logits(z) - torch.log(torch.exp(_shifted_logits(z)).sum(dim=0, keepdim=True)),
     "the differences between a row's logits stay as they were; in yours they change"),
    # Right values without a graph, or bought by overwriting a model's output, are no loss.
    ("losses.mean_squared_error", lambda p, t: torch.tensor(((p - t) ** 2).mean().item()),
     "not connected to the prediction's graph"),
    ("losses.mean_squared_error", lambda p, t: ((p - t) ** 2).mean().detach(), "not connected to the prediction's"),
    ("losses.mean_squared_error", lambda p, t: torch.tensor(sum(
        (a - b) ** 2 for a, b in zip(p.flatten().tolist(), t.flatten().tolist())) / p.numel()), "not connected"),
    ("losses.mean_squared_error", lambda p, t: torch.tensor(np.mean((p.numpy() - t.numpy()) ** 2)),
     "NumPy's give none"),
    ("losses.mean_squared_error", _mse_in_place, "the answer changed the prediction in place"),
    ("losses.log_softmax", _log_softmax_in_numpy, "NumPy's give none"),
    ("losses.log_softmax", _log_softmax_in_place, "the answer changed the logits in place"),
    ("losses.log_softmax", lambda z: _log_softmax_by_hand(z).detach(), "not connected to the logits' graph"),
    ("losses.log_softmax", lambda z: _shifted_logits(z) - torch.log(torch.exp(_shifted_logits(z)).sum(
        dim=-1, keepdim=True)).detach(), "the gradient of log_p[0, 0] + log_p[1, 2] with respect to the logits"),
    ("losses.log_softmax", lambda z: torch.log_softmax(z, -1), REFUSED + "torch.log_softmax"),
    ("losses.log_softmax", lambda z: torch.nn.functional.log_softmax(z, -1), REFUSED + "F.log_softmax"),
    ("losses.log_softmax", lambda z: torch.nn.LogSoftmax(-1)(z), REFUSED + "F.log_softmax"),
    ("losses.log_softmax", lambda z: torch.special.log_softmax(z, -1), REFUSED + "torch.special.log_softmax"),
    ("losses.log_softmax", lambda z: z.log_softmax(-1), REFUSED + "Tensor.log_softmax"),
    ("fast_training.smoothed_cross_entropy", lambda *args, **kwargs: _smoothing_by_hand(*args, **kwargs).detach(),
     "not connected to the logits' graph"),
    ("fast_training.smoothed_cross_entropy", _smoothing_with(lambda z: torch.log_softmax(z, 1), in_place=True),
     "the answer changed the logits in place"),
    # Right on the shown logits, of a few units; wrong once a logit is a hundred or more.
    ("fast_training.smoothed_cross_entropy",
     _smoothing_with(lambda z: z - torch.log(torch.exp(z).sum(1, keepdim=True))), "On large logits"),
    ("fast_training.smoothed_cross_entropy", _smoothing_with(lambda z: torch.log(torch.softmax(z, 1) + 1e-12)),
     "or log(p + eps) stop near log(eps)"),
    ("fast_training.smoothed_cross_entropy", _smoothing_by_the_courses_cross_entropy,
     REFUSED + "helpers.losses.cross_entropy"),
    ("autograd.logistic_grad", _logistic_grad_by_jacfwd, REFUSED + "forward-mode autograd"),
    ("autograd.logistic_grad", _logistic_grad_by_dual_numbers, REFUSED + "forward-mode autograd"),
    ("autograd.logistic_grad", _logistic_grad_by_finite_differences, "as finite differences, or a float32 step"),
    ("autograd.logistic_grad", _logistic_grad_in_float32, "The gradients were computed in float32 somewhere"),
    ("autograd.logistic_grad", lambda *args: (_logistic_grad_in_float32(*args)[0], _logistic_grad_in_float32(*args)[1].item()),
     "The gradients were computed in float32 somewhere"),
    # The course's own function for what the exercise asks, under whatever name it was imported.
    ("dynamic_graph.count_nodes", lambda t: len(__import__("helpers.graphs").graphs.backward_graph(t)[0]),
     REFUSED + "helpers.graphs.backward_graph"),
    ("evaluation.per_class_recall", lambda c: __import__("helpers.metrics").metrics.recall(c),
     REFUSED + "helpers.metrics.recall"),
    ("evaluation.per_class_recall", lambda c: __import__("helpers.metrics").metrics.precision(c.T),
     REFUSED + "helpers.metrics.precision"),
    ("data.tensor_mean_std", lambda images: __import__("helpers.fast").fast.channel_stats(images),
     REFUSED + "helpers.fast.channel_stats"),
    ("fast_training.crop_batch", lambda *args: __import__("helpers.fast").fast.crop_at(*args),
     REFUSED + "helpers.fast.crop_at"),
    ("training.mean_loss", _mean_loss_over_the_dataset, "That divides by len(loader.dataset)"),
    ("training.mean_loss", _mean_loss_of_cross_entropy, "That is the mean cross-entropy, whatever loss_fn is"),
    ("training.mean_loss", _mean_loss_summing, "loss_fn.reduction was left at 'sum'"),
    ("distributed.accumulated_gradients", _accumulate_cross_entropy, "the gradients of the plain cross-entropy"),
    ("distributed.accumulated_gradients", lambda *args: _accumulate_cross_entropy(*args, summed=True),
     "the gradients of the plain cross-entropy"),
    ("distributed.accumulated_gradients", _accumulate_into_grad_itself, "the model's own .grad tensors, not copies"),
    ("evaluation.early_stopping_epoch", _early_stopping_by(lambda loss, best: loss < best - 1e-4),
     "any loss strictly lower than the best so far is an improvement"),
    ("evaluation.early_stopping_epoch", _early_stopping_by(lambda loss, best: loss < best - 0.005),
     "any loss strictly lower than the best so far is an improvement"),
    ("evaluation.early_stopping_epoch", _early_stopping_by(lambda loss, best: loss < best * (1 - 1e-3)),
     "any loss strictly lower than the best so far is an improvement"),
    ("optimizers.adam_step", _adam_with_eps_squared_inside, "not sqrt(v_hat + eps**2)"),
    ("optimizers.momentum_step", _momentum_on_grad_itself, "the new buffer is the gradient tensor itself"),
    ("distributed.shard_indices", _shards_by_reseeding, "the answer changed PyTorch's global random state"),
])
def test_cheap_usual_slips_are_named(name, answer, phrase):
    verdict = judge_answer(name, answer)
    assert verdict.status == FAILED and phrase in verdict.message, verdict.message


def test_compare_names_the_items_of_a_result_whose_parts_have_names():
    expected = exercises._parts(("mean", "std"), (torch.ones(1), torch.zeros(1)))
    with pytest.raises(exercises._Mismatch) as err:
        compare((torch.ones(1), torch.ones(1)), expected)
    assert str(err.value) == ("item 1 (std): expected tensor([0.0]) of shape (1,), got tensor([1.0]) of "
                              "shape (1,) (largest difference 1)")
    with pytest.raises(exercises._Mismatch) as err:
        compare(torch.ones(1), expected)
    assert str(err.value).startswith("expected a tuple of 2 items (mean, std), got tensor([1.0])")


def test_compare_does_not_point_at_a_place_where_the_two_agree_on_nan():
    expected = torch.zeros(3, 3)
    expected[0, 0] = float("nan")
    got = expected.clone()
    got[2, 1] = 0.5
    with pytest.raises(exercises._Mismatch) as err:
        compare(got, expected)
    assert str(err.value) == "the answer, a tensor of shape (3, 3), differs most at [2, 1]: expected 0, got 0.5"


@pytest.mark.parametrize("name, answer", [
    ("losses.mean_squared_error", torch.nn.functional.mse_loss),  # the text does not rule it out
    ("losses.log_softmax", _log_softmax_by_hand),  # the shift m differentiated through: the same gradient
    ("losses.log_softmax", lambda z: z - torch.logsumexp(z, dim=-1, keepdim=True)),
    ("training.mean_loss", lambda *args: _mean_loss_summing(*args, restore=True)),  # put back as it was
    ("evaluation.early_stopping_epoch", _early_stopping_by_waiting),
    ("fast_training.smoothed_cross_entropy", _smoothing_with(lambda z: torch.log_softmax(z, 1))),
])
def test_right_answers_near_the_refused_ones_pass(name, answer):
    verdict = judge_answer(name, answer)
    assert verdict.status == PASSED, verdict.message


def test_a_refused_call_is_refused_even_when_the_answer_catches_the_error_and_goes_on():
    import sys

    def count_nodes(t):
        from helpers.graphs import backward_graph

        try:
            return len(backward_graph(t)[0])
        except Exception:
            return _count_nodes_by_walking(t)

    verdict = judge_answer("dynamic_graph.count_nodes", count_nodes)
    assert verdict.status == FAILED
    assert verdict.message == ("on a * 2, the exercise asks for your own walk of the graph, without "
                               "helpers.graphs.backward_graph, but the answer called helpers.graphs.backward_graph")
    assert sys.getprofile() is None  # the hook that refused it is gone
    from helpers.graphs import backward_graph
    assert len(backward_graph(torch.ones(1, requires_grad=True) * 2)[0]) == 2  # and the function works


def test_a_shard_check_that_finds_the_random_state_changed_puts_it_back():
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    verdict = judge_answer("distributed.shard_indices", _shards_by_reseeding)
    assert verdict.status == FAILED
    assert torch.equal(torch.get_rng_state(), before)


def _profiled_after_the_check():
    return None


def test_a_profiler_already_on_is_left_alone_and_right_answers_still_pass():
    # cProfile and %prun set a profile function before Python 3.12 (sys.monitoring from 3.12 on);
    # the check must neither break them nor stop them.
    import cProfile
    import sys

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        verdict = judge_answer("dynamic_graph.count_nodes", _count_nodes_by_walking)
        _profiled_after_the_check()
    finally:
        profiler.disable()
    assert verdict.status == PASSED, verdict.message
    assert any(getattr(entry.code, "co_name", None) == "_profiled_after_the_check" for entry in profiler.getstats())

    def mine(frame, event, arg):
        pass

    sys.setprofile(mine)
    try:
        verdict = judge_answer("dynamic_graph.count_nodes", _count_nodes_by_walking)
        still = sys.getprofile()
    finally:
        sys.setprofile(None)
    assert verdict.status == PASSED, verdict.message
    assert still is mine

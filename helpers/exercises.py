"""Checks for the book's exercises: a precise verdict, never a crash of the notebook.

Introduced in the preface ("How the exercises work"); every chapter registers its exercises here.

    check("dynamic_graph.count_nodes", count_nodes)

runs the learner's function on a few inputs and prints one verdict: it passed, or on which input
what was expected and what the answer gave. An answer that raises, returns the wrong type or shape,
or NaN is reported as such. An answer that raises ``NotImplementedError`` (the starter code of a
student edition) is "not done yet" and gets the exercise's hint.

When the environment variable ``COURSE_GRADING_LOG`` names a file, every verdict is also appended
to it as one JSON line, which is how the grading command reads a student's results.
"""

from __future__ import annotations

import json
import math
import os
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

GRADING_LOG_ENV = "COURSE_GRADING_LOG"
PASSED, FAILED, NOT_DONE = "passed", "failed", "not done"


@dataclass
class Case:
    """One input for an answer: its arguments, and how to describe them in a verdict."""

    args: tuple
    label: str
    kwargs: dict = field(default_factory=dict)


@dataclass
class Exercise:
    """An exercise's check: either ``cases`` with an ``expected`` oracle, or a ``judge``.

    ``expected(*case.args)`` gives the right result for a case (often PyTorch's own function);
    results are compared with ``atol`` and ``rtol``. A ``judge(answer)`` instead returns a
    failure message, or None when the answer is right, for answers that are not pure functions.
    """

    name: str  # "<chapter notebook>.<what>", e.g. "dynamic_graph.count_nodes"
    title: str  # as in the book's exercise heading
    practises: str  # what the exercise trains, for the instructor guide's table
    minutes: int  # an estimate of the time a learner needs
    hint: str
    cases: Callable[[], list[Case]] | None = None
    expected: Callable[..., Any] | None = None
    judge: Callable[[Callable], str | None] | None = None
    atol: float = 1e-6
    rtol: float = 1e-5


@dataclass
class Verdict:
    exercise: str
    status: str
    message: str

    def __str__(self) -> str:
        mark = {PASSED: "✅", FAILED: "❌", NOT_DONE: "⏳"}[self.status]
        return f"{mark} {self.exercise}: {self.message}"


EXERCISES: dict[str, Exercise] = {}


def register(exercise: Exercise) -> Exercise:
    if exercise.name in EXERCISES:
        raise ValueError(f"exercise {exercise.name!r} is registered twice")
    EXERCISES[exercise.name] = exercise
    return exercise


class _Mismatch(Exception):
    """An answer's result that is not the expected one; the message says how."""


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        if value.numel() <= 8:
            return f"tensor({value.detach().tolist()}) of shape {tuple(value.shape)}"
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def compare(got: Any, expected: Any, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    """Raise ``_Mismatch`` saying how ``got`` differs from ``expected``; return if they agree."""
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            raise _Mismatch(f"expected a tensor, got {type(got).__name__} {_describe(got)}")
        if got.shape != expected.shape:
            raise _Mismatch(f"expected shape {tuple(expected.shape)}, got shape {tuple(got.shape)}")
        got_f, exp_f = got.detach().double().cpu(), expected.detach().double().cpu()
        if torch.isnan(got_f).any() and not torch.isnan(exp_f).any():
            raise _Mismatch(f"the answer contains NaN: {_describe(got)}")
        if not torch.allclose(got_f, exp_f, atol=atol, rtol=rtol, equal_nan=True):
            worst = (got_f - exp_f).abs().nan_to_num(nan=math.inf).max().item()
            raise _Mismatch(f"expected {_describe(expected)}, got {_describe(got)} "
                            f"(largest difference {worst:.3g})")
        return
    if isinstance(expected, float):
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if isinstance(got, bool) or not isinstance(got, (int, float)):
            raise _Mismatch(f"expected a number, got {type(got).__name__} {_describe(got)}")
        if math.isnan(got) and not math.isnan(expected):
            raise _Mismatch(f"expected {expected:.6g}, got NaN")
        if not math.isclose(got, expected, rel_tol=rtol, abs_tol=atol):
            raise _Mismatch(f"expected {expected:.6g}, got {got:.6g}")
        return
    if isinstance(expected, (tuple, list)) and isinstance(got, (tuple, list)) and len(got) == len(expected):
        for i, (g, e) in enumerate(zip(got, expected)):
            try:
                compare(g, e, atol, rtol)
            except _Mismatch as err:
                raise _Mismatch(f"item {i}: {err}") from None
        return
    if type(got) is not type(expected) or got != expected:
        raise _Mismatch(f"expected {_describe(expected)}, got {_describe(got)}")


def _where_it_raised(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    last = frames[-1] if frames else None
    return f" (line {last.lineno}: `{last.line}`)" if last is not None and last.line else ""


def _judge_cases(exercise: Exercise, answer: Callable) -> Verdict:
    cases = exercise.cases()
    for case in cases:
        expected = exercise.expected(*case.args, **case.kwargs)
        try:
            got = answer(*case.args, **case.kwargs)
        except NotImplementedError:
            raise
        except Exception as error:  # the learner's bug, reported rather than raised
            return Verdict(exercise.name, FAILED, f"on {case.label}, the answer raised "
                           f"{type(error).__name__}: {error}{_where_it_raised(error)}")
        try:
            compare(got, expected, exercise.atol, exercise.rtol)
        except _Mismatch as mismatch:
            return Verdict(exercise.name, FAILED, f"on {case.label}, {mismatch}")
    return Verdict(exercise.name, PASSED, f"passed on all {len(cases)} inputs")


def check(name: str, answer: Callable) -> None:
    """Check a learner's ``answer`` to exercise ``name`` and print the verdict.

    It returns nothing, so that the verdict is printed once in a notebook; ``judge_answer``
    returns it.
    """
    verdict = judge_answer(name, answer)
    print(verdict)
    log = os.environ.get(GRADING_LOG_ENV)
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps({"exercise": verdict.exercise, "status": verdict.status,
                                "message": verdict.message}) + "\n")


def judge_answer(name: str, answer: Callable) -> Verdict:
    """The verdict on a learner's ``answer`` to exercise ``name``."""
    if name not in EXERCISES:
        known = ", ".join(sorted(EXERCISES))
        raise KeyError(f"there is no exercise {name!r}; the exercises are: {known}")
    exercise = EXERCISES[name]
    if not callable(answer):
        verdict = Verdict(name, FAILED, f"expected a function, got {type(answer).__name__}")
    else:
        try:
            if exercise.judge is not None:
                failure = exercise.judge(answer)
                verdict = Verdict(name, PASSED, "passed") if failure is None else Verdict(name, FAILED, failure)
            else:
                verdict = _judge_cases(exercise, answer)
        except NotImplementedError:
            verdict = Verdict(name, NOT_DONE, f"not done yet. Hint: {exercise.hint}")
        except Exception as error:  # a judge that runs the answer may see it raise
            verdict = Verdict(name, FAILED, f"the answer raised {type(error).__name__}: {error}"
                              f"{_where_it_raised(error)}")
    return verdict


# ---------------------------------------------------------------------------------------------
# The exercises, chapter by chapter. Each chapter's block registers its own.
# ---------------------------------------------------------------------------------------------

# --- Chapter: The dynamic computation graph (book/dynamic_graph.ipynb) ---


def _graph_cases() -> list[Case]:
    torch.manual_seed(0)
    a = torch.randn(3, requires_grad=True)
    b = torch.randn(3, requires_grad=True)
    w = torch.randn(3, 3, requires_grad=True)
    return [
        Case((a * 2,), "a * 2"),
        Case((a * b + a,), "a * b + a  (a is used twice)"),
        Case(((w @ a).relu().sum(),), "(w @ a).relu().sum()"),
        Case(((a.exp() + b.sin()) * (a - b),), "(a.exp() + b.sin()) * (a - b)"),
        Case((torch.randn(3),), "a tensor with no graph (grad_fn is None)"),
    ]


def _count_graph_nodes(t: torch.Tensor) -> int:
    from helpers.graphs import backward_graph

    nodes, _ = backward_graph(t)
    return len(nodes)


register(Exercise(
    name="dynamic_graph.count_nodes",
    title="Count the nodes of a graph",
    practises="walking grad_fn.next_functions; shared sub-expressions",
    minutes=10,
    hint="start from t.grad_fn, follow fn.next_functions (skip None entries) and keep a set of "
         "the nodes already seen, so that a node reached twice is counted once.",
    cases=_graph_cases,
    expected=_count_graph_nodes,
))


def _leaves_requiring_grad(t: torch.Tensor) -> int:
    from helpers.graphs import backward_graph

    nodes, _ = backward_graph(t)
    return sum(1 for node in nodes if hasattr(node, "variable"))


register(Exercise(
    name="dynamic_graph.count_leaves",
    title="Count the leaves that will receive a gradient",
    practises="leaf tensors and AccumulateGrad nodes",
    minutes=5,
    hint="the leaves are the AccumulateGrad nodes of the graph: they have a `.variable` attribute "
         "holding the leaf tensor. Reuse your walk from the previous exercise.",
    cases=_graph_cases,
    expected=_leaves_requiring_grad,
))

"""Checks for the book's exercises: a precise verdict, never a crash of the notebook.

Introduced in the preface ("How the exercises work"); every chapter registers its exercises here. A
notebook calls::

    check("dynamic_graph.count_nodes", count_nodes)

runs the learner's function on a few inputs and prints one verdict: it passed, or on which input
what was expected and what the answer gave. Once those pass, an exercise may run its hidden cases,
more inputs whose values and expected results are never printed (see ``HiddenCases``), so that an
answer must follow the rule, not a table of the results it was shown. An answer that raises,
returns the wrong type or shape, or NaN is reported as such. An answer that raises
``NotImplementedError`` (the starter code of a student edition) is "not done yet" and gets the
exercise's hint. An error raised by the check's own code, not the answer's, is a "check error": a
bug of the course, which the learner is asked to report.

When the environment variable ``COURSE_GRADING_LOG`` names a file, every verdict that ``check``
prints is also appended to it as one JSON line, which is how the grading command reads a
student's results.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import sysconfig
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

GRADING_LOG_ENV = "COURSE_GRADING_LOG"
PASSED, FAILED, NOT_DONE = "passed", "failed", "not done"
CHECK_ERROR = "check error"  # the check itself crashed: the course's bug, not the learner's


@dataclass
class Case:
    """One input for an answer: its arguments, and how to describe them in a verdict."""

    args: tuple
    label: str
    kwargs: dict = field(default_factory=dict)


# The hidden cases are drawn from this seed, the same at every check: a verdict is reproducible
# (the learner's notebook, nbval and grading agree on it), and a table of results cannot be built
# from the messages all the same, since they never show a hidden input or its expected result.
HIDDEN_SEED = 7919


@dataclass
class HiddenCases:
    """Inputs an answer must also get right once it passes the cases it is shown.

    A message shows each shown case's input and expected result, so a learner could return a
    table of them instead of following the rule. ``draw(generator)`` draws many more cases
    (the generator is seeded with ``HIDDEN_SEED``); ``expected`` gives their right results and
    ``explain``, as for ``first_failure``, may name the mistake, in words that name no input.
    A failure says that the answer passes the shown cases but not others, and that it must
    follow the rule for ``rule`` (as "any number of samples and batch size").
    """

    draw: Callable[[torch.Generator], list[Case]]
    expected: Callable[..., Any]
    rule: str
    explain: Callable[..., str] | None = None
    atol: float = 1e-6
    rtol: float = 1e-5


@dataclass
class Exercise:
    """An exercise's check: either ``cases`` with an ``expected`` oracle, or a ``judge``.

    ``expected(*case.args, **case.kwargs)`` gives the right result for a case (often PyTorch's own
    function); results are compared with ``atol`` and ``rtol``, and ``explain`` may name the mistake
    behind a wrong one (see ``first_failure``). A ``judge(answer)`` instead returns a failure
    message, or None when the answer is right, for answers that are not pure functions. ``hidden``,
    if given, runs after either has passed. ``forbids``,
    ``([(owner, attribute, shown name), ...], rule)``, makes those functions raise while the answer
    runs, for an exercise whose text rules them out: public functions of PyTorch
    (``torch.nn.functional.l1_loss``), not the ``torch._C`` functions they call, and the course's
    own (``("helpers.metrics", "recall", ...)``), which the checks themselves may still call (see
    ``_forbidding``).
    """

    name: str  # "<chapter notebook>.<what>", e.g. "dynamic_graph.count_nodes"
    title: str  # as in the book's exercise heading
    practises: str  # what the exercise trains, for the instructor guide's table
    minutes: int  # an estimate of the time a learner needs
    hint: str
    cases: Callable[[], list[Case]] | None = None
    expected: Callable[..., Any] | None = None
    explain: Callable[..., str] | None = None
    judge: Callable[[Callable], str | None] | None = None
    atol: float = 1e-6
    rtol: float = 1e-5
    hidden: HiddenCases | None = None
    forbids: tuple[list[tuple[Any, str, str]], str] | None = None
    # The function the learner writes, which the check cell passes: by default the part of the
    # name after the dot. Grading checks it by this name.
    function: str = ""

    def __post_init__(self):
        self.function = self.function or self.name.split(".", 1)[1]


@dataclass
class Verdict:
    exercise: str
    status: str
    message: str

    def __str__(self) -> str:
        mark = {PASSED: "✅", FAILED: "❌", NOT_DONE: "⏳", CHECK_ERROR: "⚠️"}[self.status]
        return f"{mark} {self.exercise}: {self.message}"


EXERCISES: dict[str, Exercise] = {}


def register(exercise: Exercise) -> Exercise:
    """Add ``exercise`` to the exercises ``check`` knows, under its name; a name is taken once."""
    if exercise.name in EXERCISES:
        raise ValueError(f"exercise {exercise.name!r} is registered twice")
    EXERCISES[exercise.name] = exercise
    return exercise


class _Mismatch(Exception):
    """An answer's result that is not the expected one; the message says how."""


class _RightValueWrongType(_Mismatch):
    """The right value in the wrong type (a float for an int, a tensor for a float): the message
    says what to return, and no usual mistake is to be looked for."""


def _short_numbers(values: Any) -> str:
    """``tolist()`` output with floats to 6 significant digits: a verdict names the largest
    difference itself, so the digits past the sixth only make the message harder to read."""
    if isinstance(values, list):
        return "[" + ", ".join(_short_numbers(v) for v in values) + "]"
    if isinstance(values, float):
        text = f"{values:.6g}"
        return text if any(c in text for c in ".ein") else text + ".0"  # 1.0, not 1
    return repr(values)


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        if value.numel() <= 8:
            return f"tensor({_short_numbers(value.detach().tolist())}) of shape {tuple(value.shape)}"
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int(value: Any) -> bool:
    """An integer: Python's, NumPy's, or a 0-d tensor of an integer dtype; never a bool."""
    if isinstance(value, torch.Tensor):
        return value.dim() == 0 and not value.is_floating_point() and not value.is_complex() \
            and value.dtype != torch.bool
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _equals(value: Any, number: int) -> bool:
    """Whether a number, or a tensor of one element (not a bool), has the value ``number``."""
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and value.dtype != torch.bool and value.item() == number
    return value == number


def _index_of(tensor: torch.Tensor, flat: int) -> list[int]:
    """The index of ``tensor``'s element number ``flat`` (row-major), as a list: [1, 0, 2]."""
    index = []
    for size in reversed(tensor.shape):
        index.append(flat % size)
        flat //= size
    return index[::-1]


class _Parts(tuple):
    """An expected tuple whose items have names, which a mismatch names: ("mean", "std")."""

    names: tuple[str, ...] = ()


def _parts(names: tuple[str, ...], values) -> _Parts:
    """``values`` as a tuple whose items a mismatch calls by ``names``."""
    result = _Parts(values)
    result.names = names
    return result


def compare(got: Any, expected: Any, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    """Return if ``got`` agrees with ``expected``; otherwise raise an exception whose message says
    how they differ (type, shape, NaN, the largest difference), which the verdict shows. A judge
    that calls it catches ``Exception``: a result it cannot read may raise another error."""
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            right = ""
            number = isinstance(got, numbers.Real) and not isinstance(got, bool)
            if (number and expected.numel() == 1
                    and math.isclose(got, expected.item(), rel_tol=rtol, abs_tol=atol)):
                right = (": the value is right, but return it as a tensor "
                         "(leave out .item() or float())")
            raise (_RightValueWrongType if right else _Mismatch)(
                f"expected a tensor, got {type(got).__name__} {_describe(got)}{right}")
        if got.shape != expected.shape:
            raise _Mismatch(f"expected shape {tuple(expected.shape)}, got shape {tuple(got.shape)}")
        got_f, exp_f = got.detach().double().cpu(), expected.detach().double().cpu()
        if torch.isnan(got_f).any() and not torch.isnan(exp_f).any():
            raise _Mismatch(f"the answer contains NaN: {_describe(got)}")
        # A large tensor is described by its shape only: say where an inf is, and where the two
        # differ most, as its values are not shown. (A small one is shown, inf included.)
        large = got.numel() > 8
        wrong_inf = torch.isinf(got_f) & torch.isfinite(exp_f)
        if large and wrong_inf.any():
            first = _index_of(wrong_inf, int(wrong_inf.flatten().nonzero()[0]))
            kinds = " and ".join(f"{sign}inf" for sign, there in (("-", got_f < 0), ("", got_f > 0))
                                 if (wrong_inf & there).any())
            there = exp_f[tuple(first)].item()
            raise _Mismatch(f"the answer contains {kinds} where finite values were expected, "
                            f"first at {first} (expected {there:.6g} there): {_describe(got)}")
        if not torch.allclose(got_f, exp_f, atol=atol, rtol=rtol, equal_nan=True):
            differences = (got_f - exp_f).abs().nan_to_num(nan=math.inf)
            # Places that agree (NaN against NaN, the same inf included) are not where they differ.
            differences[torch.isclose(got_f, exp_f, rtol=rtol, atol=atol, equal_nan=True)] = 0
            if large:  # its values are not shown: show the two where they differ most
                at = _index_of(differences, int(differences.flatten().argmax()))
                dtypes = ("" if got.dtype == expected.dtype
                          else f" (its dtype is {got.dtype}, expected {expected.dtype})")
                raise _Mismatch(f"the answer, a tensor of shape {tuple(got.shape)}, differs most at "
                                f"{at}: expected {exp_f[tuple(at)].item():.6g}, got "
                                f"{got_f[tuple(at)].item():.6g}{dtypes}")
            raise _Mismatch(f"expected {_describe(expected)}, got {_describe(got)} "
                            f"(largest difference {differences.max().item():.3g})")
        return
    if isinstance(expected, float):
        if isinstance(got, torch.Tensor) and got.numel() == 1 and got.dtype != torch.bool:
            value = got.item()
            if math.isclose(value, expected, rel_tol=rtol, abs_tol=atol):
                raise _RightValueWrongType(f"expected the float {expected:.6g}, got {_describe(got)}: the "
                                           f"value is right, but return it as a Python float (.item() or "
                                           f"float(...))")
            got = value
        if isinstance(got, bool) or not isinstance(got, numbers.Real):
            raise _Mismatch(f"expected a number, got {type(got).__name__} {_describe(got)}")
        if math.isnan(got) and not math.isnan(expected):
            raise _Mismatch(f"expected {expected:.6g}, got NaN")
        if not math.isclose(got, expected, rel_tol=rtol, abs_tol=atol):
            raise _Mismatch(f"expected {expected:.6g}, got {got:.6g}")
        return
    if isinstance(expected, (tuple, list)):
        names = getattr(expected, "names", ())
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            kind = "list" if isinstance(expected, list) else "tuple"
            listed = f" ({', '.join(names)})" if names else ""
            raise _Mismatch(f"expected a {kind} of {len(expected)} items{listed}, got {_describe(got)}")
        for i, (g, e) in enumerate(zip(got, expected)):
            try:
                compare(g, e, atol, rtol)
            except _Mismatch as err:
                item = f"item {i} ({names[i]})" if names else f"item {i}"
                raise type(err)(f"{item}: {err}") from None  # a right value stays one
        return
    if isinstance(expected, int) and not isinstance(expected, bool):
        # A NumPy integer or a 0-d integer tensor is an integer too; a bool or a float is not.
        if isinstance(got, torch.Tensor) and _is_int(got):
            got = got.item()
        if _is_int(got) and int(got) == expected:
            return
        if not isinstance(got, bool) and isinstance(got, (numbers.Real, torch.Tensor)) and _equals(got, expected):
            raise _RightValueWrongType(f"expected the int {expected}, got {_describe(got)}: the value is "
                                       f"right, but return it as an int (int(...), or // for a division)")
        if isinstance(got, bool) or (isinstance(got, torch.Tensor) and got.dtype == torch.bool):
            raise _Mismatch(f"expected the int {expected}, got {_describe(got)}: return a number, not a "
                            f"bool (int(...) turns True into 1; sum(...) counts the Trues)")
        raise _Mismatch(f"expected {_describe(expected)}, got {_describe(got)}")
    if type(got) is not type(expected) or got != expected:
        raise _Mismatch(f"expected {_describe(expected)}, got {_describe(got)}")


def _where_it_raised(error: BaseException) -> str:
    """The line of the learner's code where ``error`` came from: the innermost frame of the
    traceback outside the course and the libraries (an error raised inside PyTorch is shown at the
    learner's line that called it). With no such frame the call itself failed, and a TypeError
    there is a function whose parameters are not the ones the exercise asks for."""
    frames = traceback.extract_tb(error.__traceback__)
    own = [frame for frame in frames if not _in_course_or_library(frame.filename)]
    if own:
        return f" (line {own[-1].lineno}: `{own[-1].line}`)" if own[-1].line else ""
    if isinstance(error, TypeError):
        return " (when the check called it: compare its parameters with the exercise's)"
    return ""


class _AnswerFailed(Exception):
    """The learner's answer raised on one input; the message names the input and the error."""


_COURSE_AND_LIBRARIES = [Path(__file__).resolve().parent, Path(sysconfig.get_paths()["stdlib"]).resolve()]


def _in_course_or_library(filename: str) -> bool:
    """Whether ``filename`` is code of the course's helpers, of Python or of an installed package."""
    if filename.startswith("<frozen "):  # Python's own modules, frozen into the interpreter
        return True
    path = Path(filename).resolve()
    return (any(path.is_relative_to(folder) for folder in _COURSE_AND_LIBRARIES)
            or "site-packages" in path.parts or "dist-packages" in path.parts)


def _raised_in_answer(error: BaseException) -> bool:
    """Whether ``error`` passed through the learner's code on its way up: a frame of its traceback
    is in a file that is neither the course's helpers nor Python's or an installed package's (a
    notebook's cell, a learner's own module). The checks are the course's code."""
    return not all(_in_course_or_library(frame.filename)
                   for frame in traceback.extract_tb(error.__traceback__))


def _check_error_message(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    where = f" ({Path(frames[-1].filename).name}, line {frames[-1].lineno})" if frames else ""
    return (f"the check itself failed, not your answer: {type(error).__name__}: {error}{where}. "
            f"This is a bug in the course: please report it, with this message, to your instructor "
            f"or as an issue on the course's repository.")


def _is_unfinished(error: NotImplementedError) -> bool:
    """Whether the answer itself raised ``error`` (starter code: ``raise NotImplementedError``),
    rather than something it called, such as an operation PyTorch lacks on this device."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return True
    last = frames[-1]  # where it was raised; an operation in C++ shows as the line that called it
    if _in_course_or_library(last.filename):
        return False
    return not last.line or last.line.lstrip().startswith("raise")  # no source: benefit of doubt


class _RuleBroken(Exception):
    """The answer called a function that its exercise's text rules out."""


def _forbidding(answer: Callable, calls: list[tuple[Any, str, str]], rule: str) -> Callable:
    """``answer``, run while each ``(owner, attribute, shown name)`` of ``calls`` raises instead.

    ``owner`` is a module, a class, or a module's dotted name (imported only when an answer is
    judged: the course's helpers load matplotlib). The call is seen whatever name the answer
    reached the function by (``from helpers.metrics import recall``), and only in this thread:
    nothing is patched. A function of PyTorch's that it dispatches (``torch.log_softmax``) is
    refused by a TorchFunctionMode; one written in Python (``F.cross_entropy``, the course's
    helpers) by a profile hook, when its code starts to run; a class (``DistributedSampler``)
    when it is created. An answer that catches the error and goes on is refused all the same.
    """
    import importlib
    import inspect
    import sys

    from torch.overrides import TorchFunctionMode

    refused, codes, called = {}, {}, []
    for owner, attribute, shown in calls:
        if isinstance(owner, str):
            owner = importlib.import_module(owner)
        function = getattr(owner, attribute)
        refused[function] = shown
        if inspect.isclass(function):
            function = function.__init__
        code = getattr(inspect.unwrap(function), "__code__", None)
        if code is not None:
            codes[code] = shown

    def refuse(shown: str):
        called.append(shown)
        raise _RuleBroken(f"{rule}, but the answer called {shown}")

    class Refusing(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func in refused:
                refuse(refused[func])
            return func(*args, **(kwargs or {}))

    def profile(frame, event, arg):
        if event == "call" and frame.f_code in codes:
            refuse(codes[frame.f_code])

    def run(*args, **kwargs):
        # A profile function already set (cProfile's and %prun's before Python 3.12) keeps its
        # hook: calls to the Python functions are then not refused, rather than the profiler broken.
        hooked = bool(codes) and sys.getprofile() is None
        if hooked:
            sys.setprofile(profile)
        try:
            with Refusing():
                result = answer(*args, **kwargs)
        finally:
            if hooked:
                sys.setprofile(None)
        if called:  # the answer caught the error and went on
            raise _RuleBroken(f"{rule}, but the answer called {called[0]}")
        return result
    return run


def call_answer(answer: Callable, label: str, *args, **kwargs):
    """``answer(*args, **kwargs)``; if it raises, the check fails with a message naming ``label``.

    ``NotImplementedError`` (starter code) passes through, so that the check says "not done yet".
    Judges call the learner's answer through this, so every check reports a crash the same way.
    """
    try:
        return answer(*args, **kwargs)
    except Exception as error:  # the learner's bug, reported rather than raised
        if isinstance(error, NotImplementedError) and _is_unfinished(error):
            raise
        if isinstance(error, _RuleBroken):
            raise _AnswerFailed(f"on {label}, {error}") from error
        raise _AnswerFailed(f"on {label}, the answer raised {_error_summary(error)}") from error


def _error_summary(error: BaseException, limit: int = 300, where: bool = True) -> str:
    """``Type: message (line ...)``, the message cut to its first line (PyTorch's can run to pages)."""
    lines = str(error).strip().splitlines()
    message = lines[0] if lines else ""
    if len(message) > limit or len(lines) > 1:
        message = message[:limit].rstrip() + " ..."
    return f"{type(error).__name__}: {message}{_where_it_raised(error) if where else ''}"


def backward_of_answer(result: Any, label: str) -> None:
    """``result.backward()`` on what the answer returned (a tensor, or a Value of the engine). An
    error there comes from how the answer built its result, so the check fails naming ``label``
    and the usual cause; it is never reported as a failure of the check itself."""
    from helpers.engine import Value

    try:
        result.backward()
    except Exception as error:
        text = str(error)
        if "modified by an inplace operation" in text:
            why = (": a tensor that autograd saved for the backward pass was changed in place "
                   "(x += ..., x -= ..., or a method ending in _); write that line out of place, "
                   "x = x + ...")
        elif isinstance(result, Value) and isinstance(error, TypeError) and "positional argument" in text:
            why = (": the engine calls each result's _backward with the result's gradient, so the "
                   "closure takes that one argument (look at Value.tanh)")
        else:
            why = ""
        # The line is shown when the error came from the answer's own code (its backward closure);
        # otherwise it came from PyTorch or the engine, and no line of the answer is to blame.
        raise _AnswerFailed(f"on {label}, backward() through the answer's result raised "
                            f"{_error_summary(error, where=_raised_in_answer(error))}{why}") from error


def _fresh(value: Any) -> Any:
    # A copy for the answer, so that an answer that changes its input in place cannot change
    # what it is then compared with. Tensors that carry a graph are passed as they are: a copy
    # would add a node to the graph the answer is asked about.
    if isinstance(value, torch.Tensor) and not value.requires_grad:
        return value.clone()
    if isinstance(value, list):
        return list(value)
    return value


def first_failure(answer: Callable, cases: list[Case], expected: Callable,
                  explain: Callable[..., str] | None = None, atol: float = 1e-6,
                  rtol: float = 1e-5) -> str | None:
    """Run ``answer`` on each case and compare with ``expected(*case.args, **case.kwargs)``; the
    first failure.

    The message names the case and says how the result differs. ``explain(got, want, *args,
    **kwargs)`` may add the usual mistake that gives exactly that result (``""`` when none does),
    so that the learner reads what to change, not only what differs. None when every case
    agrees. An answer that raises fails the check through ``call_answer``, naming the case.
    """
    found = _first_mismatch(answer, cases, expected, explain, atol, rtol)
    if found is None:
        return None
    case, mismatch, explanation = found
    return f"on {case.label}, {mismatch}" + (f". {explanation}" if explanation else "")


def _first_mismatch(answer: Callable, cases: list[Case], expected: Callable,
                    explain: Callable[..., str] | None, atol: float, rtol: float,
                    crash_label: str | None = None) -> tuple[Case, str, str] | None:
    """The first case whose result differs from ``expected``'s: (the case, how it differs, the
    mistake ``explain`` names or ""); None when every case agrees. A crash is reported on
    ``crash_label``, or on the case's own label."""
    for case in cases:
        want = expected(*case.args, **case.kwargs)
        got = call_answer(answer, crash_label or case.label, *map(_fresh, case.args), **case.kwargs)
        try:
            compare(got, want, atol, rtol)
        except _Mismatch as mismatch:
            try:  # a right value in the wrong type has no mistake behind it to name
                explanation = (explain(got, want, *case.args, **case.kwargs)
                               if explain and not isinstance(mismatch, _RightValueWrongType) else "")
            except Exception:  # a mistake-finder that cannot read this answer explains nothing
                explanation = ""
            return case, str(mismatch), explanation
        except Exception as error:  # a result compare cannot read: sparse, meta, an int too big for a float
            try:
                compare(want, want, atol, rtol)
            except Exception:  # the check's own result is what cannot be compared: a bug of the check
                raise error from None
            return case, (f"the answer returned {_kind(got)}, which cannot be compared with the expected "
                          f"result, {_kind(want)} ({_error_summary(error)}): return {_kind(want)}"), ""
    return None


def _kind(value: Any) -> str:
    """What sort of thing ``value`` is, for a result that could not be compared: "a dense tensor
    on cpu", "a value of type int"."""
    if isinstance(value, torch.Tensor):
        layout = "dense" if value.layout == torch.strided else str(value.layout).removeprefix("torch.")
        return f"a {layout} tensor on {value.device}"
    return f"a value of type {type(value).__name__}"


def hidden_failure(answer: Callable, hidden: HiddenCases, seed: int = HIDDEN_SEED) -> str | None:
    """Run ``answer`` on the hidden cases drawn from ``seed``; a failure message that shows
    neither the input nor the expected result, or None when every case agrees."""
    cases = hidden.draw(torch.Generator().manual_seed(seed))
    found = _first_mismatch(answer, cases, hidden.expected, hidden.explain, hidden.atol, hidden.rtol,
                            crash_label="an input that the check does not show")
    if found is None:
        return None
    _, _, explanation = found
    return (f"passes the cases shown, but gives a wrong result on other inputs, which the check does "
            f"not show: make sure it follows the rule for {hidden.rule}, not only for the examples"
            + (f". {explanation}" if explanation else ""))


def judge_cases(cases: Callable[[], list[Case]], expected: Callable,
                explain: Callable[..., str] | None = None, *, atol: float = 1e-6,
                rtol: float = 1e-5, then: Callable[[Callable], str | None] | None = None):
    """An exercise's ``judge``: ``first_failure`` over ``cases()``, then, if they all agree,
    ``then(answer)`` for what the cases cannot see (such as a gradient)."""
    def judge(answer: Callable) -> str | None:
        failure = first_failure(answer, cases(), expected, explain, atol, rtol)
        if failure is None and then is not None:
            failure = then(answer)
        return failure
    return judge


def _draw_int(generator: torch.Generator, low: int, high: int) -> int:
    """A random int from ``low`` to ``high``, both included: for the draws of hidden cases."""
    return int(torch.randint(low, high + 1, (), generator=generator))


def first_matching(mistakes: list[tuple[Callable[..., bool], str]]) -> Callable[..., str]:
    """An ``explain`` for ``first_failure`` from (predicate, explanation) pairs: the explanation
    of the first predicate that holds for ``(got, want, *args)``, or ``""``."""
    def explain(got: Any, want: Any, *args, **kwargs) -> str:
        for predicate, explanation in mistakes:
            try:
                if predicate(got, want, *args, **kwargs):
                    return explanation
            except Exception:  # a predicate that cannot handle this result: not its mistake
                continue
        return ""
    return explain


def _verdict_on_cases(exercise: Exercise, answer: Callable) -> Verdict:
    cases = exercise.cases()
    failure = first_failure(answer, cases, exercise.expected, exercise.explain, exercise.atol, exercise.rtol)
    if failure is not None:
        return Verdict(exercise.name, FAILED, failure)
    return Verdict(exercise.name, PASSED, f"passed on all {len(cases)} inputs")


def check(name: str, answer: Callable) -> None:
    """Check a learner's ``answer`` to exercise ``name`` and print the verdict.

    It returns nothing, so that the verdict is printed once in a notebook; ``judge_answer``
    returns it. With ``COURSE_GRADING_LOG`` set, the verdict is also appended to that file.
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
        # The learner's notebook may have turned gradients off (torch.set_grad_enabled(False) or
        # inference_mode, for inference): a check computes gradients, and must judge alike anywhere.
        with torch.inference_mode(False), torch.enable_grad():
            verdict = _judged(exercise, answer)
    return verdict


def _judged(exercise: Exercise, answer: Callable) -> Verdict:
    """``judge_answer``'s verdict on a callable ``answer``."""
    name = exercise.name
    if exercise.forbids is not None:
        answer = _forbidding(answer, *exercise.forbids)
    try:
        if exercise.judge is not None:
            failure = exercise.judge(answer)
            verdict = Verdict(name, PASSED, "passed") if failure is None else Verdict(name, FAILED, failure)
        else:
            verdict = _verdict_on_cases(exercise, answer)
        if verdict.status == PASSED and exercise.hidden is not None:
            failure = hidden_failure(answer, exercise.hidden)
            if failure is not None:
                verdict = Verdict(name, FAILED, failure)
    except _AnswerFailed as failure:
        verdict = Verdict(name, FAILED, str(failure))
    except Exception as error:
        if isinstance(error, NotImplementedError) and _is_unfinished(error):  # starter code
            verdict = Verdict(name, NOT_DONE, f"not done yet. Hint: {exercise.hint}")
        elif _raised_in_answer(error):  # a judge that runs the answer saw it raise
            verdict = Verdict(name, FAILED, f"the answer raised {_error_summary(error)}")
        else:  # the check's own code failed: never blame the learner for it
            verdict = Verdict(name, CHECK_ERROR, _check_error_message(error))
    return verdict


# ---------------------------------------------------------------------------------------------
# The exercises, chapter by chapter. Each chapter's block registers its own.
# ---------------------------------------------------------------------------------------------

# --- Chapter: The dynamic computation graph (book/dynamic_graph.ipynb) ---


def _graph_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(0)  # the learner's global random state is left alone
    a = torch.randn(3, generator=generator).requires_grad_()
    b = torch.randn(3, generator=generator).requires_grad_()
    w = torch.randn(3, 3, generator=generator).requires_grad_()
    return [
        Case((a * 2,), "a * 2"),
        Case((a * b + a,), "a * b + a  (a is used twice)"),
        Case(((w @ a).relu().sum(),), "(w @ a).relu().sum()"),
        Case(((a.exp() + b.sin()) * (a - b),), "(a.exp() + b.sin()) * (a - b)"),
        Case((torch.randn(3, generator=generator),), "a tensor with no graph (grad_fn is None)"),
        Case((torch.randn((), generator=generator).requires_grad_(),),
             "a leaf that requires a gradient, itself the output (grad_fn is None)"),
    ]


def _graph_hidden_cases(generator: torch.Generator) -> list[Case]:
    """Random graphs: leaves that do or do not require a gradient, combined by random operations
    whose operands are drawn from everything built so far, so that sub-expressions are shared."""
    unary = [torch.exp, torch.sin, torch.tanh, torch.relu, lambda t: t * 2, lambda t: -t]
    binary = [torch.add, torch.mul, torch.sub]
    cases = []
    for _ in range(40):
        pool = [torch.randn(3, generator=generator).requires_grad_(bool(_draw_int(generator, 0, 1)))
                for _ in range(_draw_int(generator, 1, 4))]
        for _ in range(_draw_int(generator, 0, 8)):
            a = pool[_draw_int(generator, 0, len(pool) - 1)]
            if _draw_int(generator, 0, 1):
                pool.append(unary[_draw_int(generator, 0, len(unary) - 1)](a))
            else:
                b = pool[_draw_int(generator, 0, len(pool) - 1)]
                pool.append(binary[_draw_int(generator, 0, len(binary) - 1)](a, b))
        out = pool[-1].sum() if _draw_int(generator, 0, 1) else pool[-1]
        cases.append(Case((out,), f"a random graph of {len(pool)} tensors"))
    return cases


def _count_graph_nodes(t: torch.Tensor) -> int:
    from helpers.graphs import backward_graph

    nodes, _ = backward_graph(t)
    return len(nodes)


def _count_paths(node) -> int:
    """The nodes met by a walk that visits a node again on every path that reaches it."""
    if node is None:
        return 0
    return 1 + sum(_count_paths(child) for child, _ in node.next_functions)


def _count_nodes_explain(got: Any, want: int, t: torch.Tensor) -> str:
    """Name the usual mistake behind a wrong count of nodes, or return ''."""
    from helpers.graphs import backward_graph

    if not _is_int(got) or t.grad_fn is None:
        return ""
    nodes, _ = backward_graph(t)
    leaves = sum(1 for node in nodes if hasattr(node, "variable"))
    slips = [  # (the count the slip gives, what to say); on a small graph two may give one count
        (want - leaves if leaves else None,
         "That leaves out the AccumulateGrad nodes, one for each leaf that requires a gradient: "
         "next_functions reaches them, and they are nodes of the graph too."),
        (want - 1, "That is one short: count t.grad_fn itself as well."),
        (_count_paths(t.grad_fn),
         "That counts a node once for every path that reaches it: remember the nodes already "
         "seen (a set), and count each one once."),
    ]
    named = {text for count, text in slips if count == int(got) and count != want}
    if len(named) == 1:
        return named.pop()
    if named:  # several slips give this count here: say what they share
        return ("That is short of the whole graph: count t.grad_fn itself and every node "
                "next_functions reaches from it, AccumulateGrad nodes included, each once.")
    return ""


register(Exercise(
    name="dynamic_graph.count_nodes",
    title="Count the nodes of a graph",
    practises="walking grad_fn.next_functions; shared sub-expressions",
    minutes=10,
    hint="walk the graph as the chapter's `walk` does (section \"Walking the graph\"), but count "
         "each node once: in \"Drawing it\" a node is reached along two paths.",
    cases=_graph_cases,
    expected=_count_graph_nodes,
    explain=_count_nodes_explain,
    hidden=HiddenCases(_graph_hidden_cases, _count_graph_nodes, rule="any graph",
                       explain=_count_nodes_explain),
    # The chapter shows len(backward_graph(t)[0]): the exercise is the walk that function does.
    forbids=([("helpers.graphs", "backward_graph", "helpers.graphs.backward_graph")],
             "the exercise asks for your own walk of the graph, without helpers.graphs.backward_graph"),
))


def _leaves_requiring_grad(t: torch.Tensor) -> int:
    from helpers.graphs import backward_graph

    if t.grad_fn is None:  # t is a leaf itself: backward() writes its own .grad, if it has one
        return int(t.requires_grad)
    nodes, _ = backward_graph(t)
    return sum(1 for node in nodes if hasattr(node, "variable"))


register(Exercise(
    name="dynamic_graph.count_leaves",
    title="Count the leaves that will receive a gradient",
    practises="leaf tensors and AccumulateGrad nodes",
    minutes=5,
    hint="the leaves are the AccumulateGrad nodes of the graph (section \"Walking the graph\"); "
         "reuse your walk from the previous exercise. Mind a t that is a leaf itself.",
    cases=_graph_cases,
    expected=_leaves_requiring_grad,
    hidden=HiddenCases(_graph_hidden_cases, _leaves_requiring_grad, rule="any graph"),
))


# --- Chapter: Loss functions, from their equations (book/losses.ipynb) ---
# Each judge runs the answer on a few inputs; when a result is wrong it names the usual mistake
# that produces exactly that result, so the message says what to change, not only what differs.


def _losses_same(got: Any, other: Any) -> bool:
    return (isinstance(got, torch.Tensor) and isinstance(other, torch.Tensor)
            and got.shape == other.shape
            and torch.allclose(got.detach().double(), other.detach().double(), rtol=1e-4, atol=1e-6))


def _losses_gives(wrong: Callable) -> Callable:
    """A predicate: the answer's result equals what the mistaken formula ``wrong`` gives (one
    that does not apply to the inputs raises, which ``first_matching`` takes as no match)."""
    return lambda got, want, *args, **kwargs: _losses_same(got, wrong(*args, **kwargs))


def _losses_not_finite(got, want, *args, **kwargs) -> bool:
    return (isinstance(got, torch.Tensor) and not torch.isfinite(got).all().item()
            and torch.isfinite(want).all().item())


def _losses_judge(cases: Callable[[], list[Case]], expected: Callable,
                  mistakes: list[tuple[Callable, str]], then: Callable | None = None):
    """A judge: ``expected`` per case; on a mismatch, the first matching mistake's explanation."""
    return judge_cases(cases, expected, first_matching(mistakes), atol=1e-5, rtol=1e-5, then=then)


def _losses_hidden(draw: Callable[[torch.Generator], list[Case]], expected: Callable,
                   mistakes: list[tuple[Callable, str]], rule: str) -> HiddenCases:
    """Hidden cases, judged as ``_losses_judge`` judges the shown ones."""
    return HiddenCases(draw, expected, rule, first_matching(mistakes), atol=1e-5, rtol=1e-5)


def _not_connected(whose: str) -> str:
    return (f"the values are right, but the result is not connected to {whose} graph (was .item(), "
            f".detach(), NumPy or a new torch.tensor(...) used?), so no gradient can flow back through it")


_NOT_CONNECTED = _not_connected("the logits'")


def _rounded(values: Any) -> Any:
    """A tensor's values as lists of floats to 4 decimals, for a message."""
    values = values.tolist() if isinstance(values, torch.Tensor) else values
    return [_rounded(v) for v in values] if isinstance(values, list) else round(values, 4)


def _gradient_of_answer(answer: Callable, described: str, what: str, values: list, others: tuple,
                        reference: Callable, weight: list | None = None, seen: str = "") -> str | None:
    """Once the values are right: the answer run on ``values`` as a model's output is given, a
    tensor that requires a gradient and is not a leaf, then on ``others``. Its result must leave
    that input as it was, be connected to its graph, and give ``reference``'s gradient: of the
    result itself, or of ``(result * weight).sum()`` (which ``seen`` describes) for a result of
    many numbers. ``what`` names the input ("the logits"). A failure message, or None."""
    leaf = torch.tensor(values, requires_grad=True)
    given = leaf * 1  # not a leaf, as model(x) is: autograd may need it as it was
    version = given._version
    try:
        got = call_answer(answer, described, given, *map(_fresh, others))
    except _AnswerFailed as failure:
        if "numpy()" not in str(failure.__cause__):
            raise
        return (f"{failure}: a loss, and what it is built from, must be computed with PyTorch's "
                f"operations, which autograd follows to the gradient; NumPy's give none, and neither "
                f"does .detach().numpy()")
    if given._version != version:
        return (f"on {described}, the answer changed {what} in place (with -=, += or a method ending "
                f"in _): that overwrites the caller's tensor, a model's output which backward() may "
                f"still need. Compute new tensors instead (z = z - m, not z -= m)")
    checked_leaf = torch.tensor(values, requires_grad=True)
    want = reference(checked_leaf * 1, *others)
    try:
        compare(got, want, atol=1e-5, rtol=1e-5)
    except _Mismatch as mismatch:
        return f"on {described}, {mismatch}"
    whose = what + ("'" if what.endswith("s") else "'s")
    if got.grad_fn is None:
        return _not_connected(whose)
    seed = torch.ones(()) if weight is None else torch.tensor(weight)
    (want * seed).sum().backward()
    backward_of_answer((got * seed).sum(), described)
    if leaf.grad is not None and torch.allclose(leaf.grad, checked_leaf.grad, atol=1e-6, rtol=1e-5):
        return None
    if leaf.grad is None:
        return (f"the values are right, but on {described} no gradient reaches {what}: the result "
                f"was computed from a copy of them (torch.tensor(...), .detach() or NumPy), not from "
                f"the tensor itself")
    return (f"the values are right, but on {described} the gradient{seen} with respect to {what} is "
            f"{_rounded(leaf.grad)}, not {_rounded(checked_leaf.grad)}")


def _losses_mse_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(0)
    return [
        Case((torch.tensor([2.5, 0.0, 2.0, 8.0]), torch.tensor([3.0, -0.5, 2.0, 7.0])),
             "prediction [2.5, 0.0, 2.0, 8.0] and target [3.0, -0.5, 2.0, 7.0]"),
        Case((torch.randn(4, 3, generator=gen), torch.randn(4, 3, generator=gen)),
             "a prediction and target of shape (4, 3)"),
        Case((torch.tensor([1.5]), torch.tensor([1.5])), "a perfect prediction [1.5] of target [1.5]"),
    ]


def _losses_hidden_mse(generator: torch.Generator) -> list[Case]:
    """Predictions and targets of 1 to 3 dimensions, of 1 to 5 elements along each."""
    cases = []
    for _ in range(20):
        shape = tuple(_draw_int(generator, 1, 5) for _ in range(_draw_int(generator, 1, 3)))
        prediction, target = torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
        cases.append(Case((prediction, target), f"a prediction and target of shape {shape}"))
    return cases


def _losses_true_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.mse_loss(prediction, target)


_LOSSES_MSE_MISTAKES = [
    (lambda got, want, p, t: isinstance(got, torch.Tensor) and got.dim() > 0,
     "The loss is one number: average over every element, .mean() with no dim."),
    (_losses_gives(lambda p, t: ((p - t) ** 2).sum() / len(p)),
     "That divides by len(prediction), the number of rows, which is right only for a 1-D "
     "prediction such as the chapter's: divide by the number of elements, or use .mean()."),
    (_losses_gives(lambda p, t: ((p - t) ** 2).sum()),
     "That is the sum of the squared errors: divide by the number of elements, or use .mean()."),
    (_losses_gives(lambda p, t: ((p - t) ** 2).mean().sqrt()),
     "That is the root of the mean squared error (the RMSE): leave out the square root."),
    (_losses_gives(lambda p, t: (p - t).abs().mean()),
     "That is the mean absolute error: square the differences instead of taking their "
     "absolute value."),
    (_losses_gives(lambda p, t: (p - t).mean()),
     "That averages the differences without squaring them, so errors of opposite sign cancel: "
     "square each difference first."),
]


def _losses_mse_gradient(answer: Callable) -> str | None:
    """Once the values are right: the gradient 2 (prediction - target) / N, through a prediction
    that is a model's output, left as it was."""
    values, target = [[0.5, -1.0], [2.0, 0.0]], [[1.0, 1.0], [0.0, 0.5]]
    return _gradient_of_answer(answer, f"a prediction {values} that requires a gradient (a model's output) "
                               f"and target {target}", "the prediction", values, (torch.tensor(target),),
                               _losses_true_mse)


register(Exercise(
    name="losses.mean_squared_error",
    title="Write the mean squared error",
    practises="turning an equation into tensor code; mean versus sum",
    minutes=5,
    hint="the equation of the section \"Mean squared error\": N counts every element of the "
         "tensors, not only their rows (see Tensor.mean and Tensor.numel).",
    judge=_losses_judge(_losses_mse_cases, _losses_true_mse, _LOSSES_MSE_MISTAKES,
                        then=_losses_mse_gradient),
    hidden=_losses_hidden(_losses_hidden_mse, _losses_true_mse, _LOSSES_MSE_MISTAKES,
                          "any prediction and target of the same shape"),
))


def _losses_bce_cases() -> list[Case]:
    return [
        Case((torch.tensor([-2.0, 0.5, 3.0]), torch.tensor([0.0, 1.0, 1.0])),
             "logits [-2.0, 0.5, 3.0] and targets [0.0, 1.0, 1.0]"),
        Case((torch.tensor([1.0, -1.0, 0.0]), torch.tensor([0.2, 0.7, 0.5])),
             "logits [1.0, -1.0, 0.0] and soft targets [0.2, 0.7, 0.5]"),
        Case((torch.tensor([100.0, -100.0]), torch.tensor([1.0, 1.0])),
             "logits [100.0, -100.0] and targets [1.0, 1.0]"),
        Case((torch.tensor([-200.0, 200.0, -1000.0, 1000.0]), torch.tensor([1.0, 0.0, 0.0, 1.0])),
             "logits [-200.0, 200.0, -1000.0, 1000.0] and targets [1.0, 0.0, 0.0, 1.0]"),
    ]


def _losses_capped(got, want, logits, targets) -> bool:
    return (logits.abs().max().item() >= 100 and isinstance(got, torch.Tensor)
            and bool(torch.isfinite(got).all()) and got.sum().item() < 0.99 * want.sum().item())


def _losses_bce_gradient(answer: Callable) -> str | None:
    """Once the values are right: is the gradient (sigmoid(z) - y) / N, finite at large logits
    and right at z = 0 exactly, where clamp, max and abs have a kink?"""
    values, labels = [-200.0, -3.0, 0.0, 0.0, 0.5, 200.0], [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    logits, targets = torch.tensor(values, requires_grad=True), torch.tensor(labels)
    label = f"logits {values} that require a gradient"
    loss = call_answer(answer, label, logits, targets.clone())
    if not isinstance(loss, torch.Tensor) or loss.grad_fn is None:
        return _NOT_CONNECTED
    backward_of_answer(loss, label)
    want = (torch.sigmoid(logits.detach()) - targets) / len(targets)
    if logits.grad is None or not torch.allclose(logits.grad, want, atol=1e-6, rtol=1e-5):
        got = None if logits.grad is None else [round(g, 4) for g in logits.grad.tolist()]
        advice = ""
        if logits.grad is not None and not torch.isfinite(logits.grad).all():
            advice = (": torch.where(condition, a, b) sends the gradient through both branches, "
                      "so an inf or NaN in the branch it did not pick still poisons the result; "
                      "give each branch only the logits where it is used (and 0 elsewhere, with "
                      "torch.where again), so that neither branch can overflow anywhere")
        elif logits.grad is not None:
            nonzero = logits.detach() != 0
            if torch.allclose(logits.grad[nonzero], want[nonzero], atol=1e-6, rtol=1e-5):
                advice = (": the gradient is wrong only at z = 0 exactly, where clamp, max and "
                          "abs have a kink and autograd takes a slope of 0 or 1 for it; choose "
                          "a branch's input with torch.where instead, or use the chapter's "
                          "log-sum-exp form, whose shift m is a constant")
        return (f"the values are right, but on logits {values} and targets {labels} the gradient "
                f"with respect to the logits is {got}, not (sigmoid(z) - y) / N = "
                f"{[round(g, 4) for g in want.tolist()]}{advice}")
    return None


register(Exercise(
    name="losses.bce_with_logits",
    title="Find why a hand-written BCE returns NaN, and fix it",
    practises="float32 limits of sigmoid and log; the log-sum-exp form of BCE on logits",
    minutes=15,
    hint="the backward pass of torch.where reaches both branches, at every element: make sure "
         "neither branch can overflow where it is not used, and check your gradient at z = 0 "
         "too (the chapter's section \"The log-sum-exp form\" ends with why).",
    judge=_losses_judge(
        _losses_bce_cases, lambda z, y: torch.nn.functional.binary_cross_entropy_with_logits(z, y), [
            (lambda got, want, z, y: isinstance(got, torch.Tensor) and got.dim() > 0,
             "The loss is one number: average the losses of the elements, .mean() with no dim."),
            (_losses_not_finite,
             "In float32, sigmoid(z) rounds to exactly 1 for z above about 16.6 and to 0 below about "
             "-88.7, so log(p) or log(1 - p) is log(0) = -inf, and 0 * (-inf) is NaN: do not form "
             "sigmoid(z); write log(sigmoid(z)) = -log(1 + exp(-z)) as a log-sum-exp."),
            (_losses_capped,
             "The answer is finite but too small on large logits: clamping p (or adding an eps "
             "inside the log) caps each loss at -log(eps), while the loss of a confidently wrong "
             "logit z is about |z|. Compute the loss from the logits, without sigmoid."),
            (_losses_gives(lambda z, y: torch.nn.functional.binary_cross_entropy_with_logits(
                z, y, reduction="sum")),
             "That is the sum over the batch: divide by the number of elements."),
            (_losses_gives(lambda z, y: -torch.nn.functional.binary_cross_entropy_with_logits(z, y)),
             "The sign is wrong: BCE is minus the mean log-likelihood, never below 0."),
        ],
        then=_losses_bce_gradient),
))


def _losses_log_softmax_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(1)
    return [
        Case((torch.tensor([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]]),), "logits [[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]]"),
        Case((torch.tensor([[1000.0, 0.0, -1000.0]]),), "the large logits [[1000.0, 0.0, -1000.0]]"),
        Case((50 * torch.randn(5, 4, generator=gen),), "a batch of shape (5, 4) with logits of size up to about 100"),
        # The last dimension is dim=1 only for 2-D logits: these two tell dim=-1 from dim=1.
        Case((10 * torch.randn(2, 3, 4, generator=gen),), "logits of shape (2, 3, 4)"),
        Case((torch.tensor([2.0, -1.0, 1000.0]),), "the 1-D logits [2.0, -1.0, 1000.0] of one example"),
    ]


def _log_softmax_shift(got, logits) -> torch.Tensor | None:
    """What the answer takes away from each logit, ``logits - got``, where the answer is a finite
    tensor of the logits' shape; None otherwise."""
    if not (isinstance(got, torch.Tensor) and got.shape == logits.shape and got.is_floating_point()
            and torch.isfinite(got).all()):
        return None
    return (logits - got).detach()


def _log_softmax_one_shift_per_row(shift: torch.Tensor, logits: torch.Tensor) -> bool:
    spread = shift.amax(dim=-1) - shift.amin(dim=-1)
    return bool((spread <= 1e-4 * (1 + logits.abs().amax())).all())


def _log_softmax_wrong_normaliser(got, want, logits) -> bool:
    """Each row loses one number, as it should, but not log(sum(exp(row)))."""
    shift = _log_softmax_shift(got, logits)
    return shift is not None and _log_softmax_one_shift_per_row(shift, logits)


def _log_softmax_reshapes_rows(got, want, logits) -> bool:
    """The differences between one row's logits do not survive: something changes each logit
    by its own amount."""
    shift = _log_softmax_shift(got, logits)
    return shift is not None and not _log_softmax_one_shift_per_row(shift, logits)


def _losses_log_softmax_gradient(answer: Callable) -> str | None:
    """Once the values are right: the gradient of two picked log-probabilities, through logits
    that are a model's output, left as they were."""
    values = [[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]]
    return _gradient_of_answer(answer, f"logits {values} that require a gradient (a model's output)",
                               "the logits", values, (), lambda z: torch.log_softmax(z, dim=-1),
                               weight=[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]],
                               seen=" of log_p[0, 0] + log_p[1, 2]")


# PyTorch's log-softmax, under each of its names: the exercise asks for it written out.
_LOG_SOFTMAX_ITSELF = [(torch, "log_softmax", "torch.log_softmax"),
                       (torch.nn.functional, "log_softmax", "F.log_softmax"),
                       (torch.special, "log_softmax", "torch.special.log_softmax"),
                       (torch.Tensor, "log_softmax", "Tensor.log_softmax")]


register(Exercise(
    name="losses.log_softmax",
    title="Write a log-softmax that does not overflow",
    practises="the max-subtraction trick; reducing along the right dimension",
    minutes=10,
    hint="the maximum-subtraction of the section \"Many classes: softmax and log-softmax\", "
         "done along the last dimension for any number of dimensions (dim=-1, keepdim=True).",
    judge=_losses_judge(_losses_log_softmax_cases, lambda z: torch.log_softmax(z, dim=-1), [
        (_losses_not_finite,
         "In float32 exp(z) overflows to inf once z passes about 88.7 (and inf / inf is NaN), "
         "and a probability such as exp(-1000) underflows to 0 (and log(0) is -inf): never form "
         "the probabilities: shift each row by its maximum first, which does not change the "
         "log-softmax mathematically, so that no exp overflows."),
        (_losses_gives(lambda z: torch.log_softmax(z, dim=0)),
         "That normalises down the columns (dim=0): each row holds one example's logits, so sum "
         "along the last dimension, dim=-1."),
        (_losses_gives(lambda z: torch.log_softmax(z, dim=1)),
         "That normalises along dim=1, which is the last dimension only for 2-D logits (as in "
         "the chapter's log_softmax_rows): use dim=-1, so that any shape works."),
        (_losses_gives(lambda z: z - torch.logsumexp(z.flatten(), dim=0)),
         "That normalises over the whole batch at once: sum along the last dimension only, "
         "with keepdim=True."),
        (_losses_gives(lambda z: torch.softmax(z, dim=-1)),
         "That is the softmax itself: return its logarithm."),
        (_losses_gives(lambda z: z),
         "That returns the logits unchanged: take away from each row its log-sum-exp, so that "
         "exp of the result sums to 1 along the last dimension."),
        (_log_softmax_wrong_normaliser,
         "The answer changes each row's logits by one number, the right kind of change, but that "
         "number is not the row's log-sum-exp: exp of the answer does not sum to 1 along the last "
         "dimension. The number is the logarithm of a sum of exponentials (not a mean), taken "
         "along the last dimension only (dim=-1, keepdim=True), with the maximum m taken away "
         "once in all."),
        (_log_softmax_reshapes_rows,
         "log_softmax(z) is z minus one number per row, so the differences between a row's "
         "logits stay as they were; in yours they change: subtract only things computed per row "
         "along the last dimension (dim=-1, keepdim=True), from every logit of that row."),
    ], then=_losses_log_softmax_gradient),
    forbids=(_LOG_SOFTMAX_ITSELF, "the exercise asks for the log-softmax written out, with the maximum "
                                  "subtracted, not computed by PyTorch's own"),
))


def _losses_ce_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(2)
    garbage = torch.tensor([[0.5, 2.0, -1.0], [float("inf"), 0.0, 0.0], [1.0, 1.0, 3.0]])
    return [
        Case((torch.tensor([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]]), torch.tensor([0, 2])),
             "logits [[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]] and targets [0, 2]"),
        Case((torch.tensor([[1000.0, 0.0, -1000.0], [0.0, 1000.0, -1000.0]]), torch.tensor([2, 1])),
             "the large logits [[1000.0, 0.0, -1000.0], [0.0, 1000.0, -1000.0]] and targets [2, 1]"),
        Case((torch.randn(5, 4, generator=gen), torch.tensor([3, -100, 1, -100, 2])),
             "a batch of 5 examples and 4 classes with targets [3, -100, 1, -100, 2] (two padding)"),
        Case((torch.randn(4, 3, generator=gen), torch.tensor([0, 2, 0, 1])),
             "targets [0, 2, 0, 1] and ignore_index=0", dict(ignore_index=0)),
        Case((garbage, torch.tensor([1, -100, 2])),
             "targets [1, -100, 2] where the padding example's logits are [inf, 0.0, 0.0]"),
    ]


def _losses_rows(log_p: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return log_p[torch.arange(len(targets)), targets]


def _losses_ce_over_n(z, y, ignore_index=-100):
    """The mistake: the kept examples' losses summed, but divided by every example."""
    kept = y != ignore_index
    return -_losses_rows(torch.log_softmax(z[kept], -1), y[kept]).sum() / len(y)


def _losses_padding_not_finite(got, want, z, y, ignore_index=-100) -> bool:
    left_out = y == ignore_index
    return (_losses_not_finite(got, want) and left_out.any().item()
            and not torch.isfinite(z[left_out]).all().item())


def _losses_hidden_ce(generator: torch.Generator) -> list[Case]:
    """Batches of 1 to 8 examples of 2 to 6 classes, some of whose targets are -100 or, given as
    ignore_index, a class; at least one example is kept."""
    cases = []
    for i in range(20):
        n, classes = _draw_int(generator, 1, 8), _draw_int(generator, 2, 6)
        logits = 3 * torch.randn(n, classes, generator=generator)
        targets = torch.randint(0, classes, (n,), generator=generator)
        settings = {} if i % 2 else {"ignore_index": _draw_int(generator, 0, classes - 1)}
        ignore_index = settings.get("ignore_index", -100)
        left_out = torch.rand(n, generator=generator) < 0.3
        left_out[_draw_int(generator, 0, n - 1)] = False
        targets[left_out] = ignore_index
        kept = ~left_out
        targets[kept & (targets == ignore_index)] = (ignore_index + 1) % classes
        cases.append(Case((logits, targets), f"{n} examples of {classes} classes, targets {targets.tolist()}, "
                          f"{settings}", settings))
    return cases


def _losses_true_ce(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits, targets, ignore_index=ignore_index)


def _losses_ce_gradient(answer: Callable) -> str | None:
    """Once the values are right: is the gradient finite, (softmax - one-hot) / (examples kept) on
    the kept rows and 0 on the padding, even when a padding row's logits are inf?"""
    values, labels = [[0.5, 2.0, -1.0], [float("inf"), 0.0, 0.0], [1.0, 1.0, 3.0]], [1, -100, 2]
    logits, targets = torch.tensor(values, requires_grad=True), torch.tensor(labels)
    described = f"logits {values} that require a gradient and targets {labels}"
    loss = call_answer(answer, described, logits, targets.clone())  # the answer's own copy
    if not isinstance(loss, torch.Tensor) or loss.grad_fn is None:
        return _NOT_CONNECTED
    backward_of_answer(loss, described)
    kept = targets != -100
    want = torch.zeros_like(logits)
    want[kept] = (torch.softmax(logits.detach()[kept], -1)
                  - torch.nn.functional.one_hot(targets[kept], 3)) / kept.sum()
    if logits.grad is not None and torch.allclose(logits.grad, want, atol=1e-6, rtol=1e-5):
        return None
    def rounded(t):
        return [[round(x, 4) for x in row] for row in t.tolist()]
    got = None if logits.grad is None else rounded(logits.grad)
    advice = ""
    if logits.grad is not None and not torch.isfinite(logits.grad).all():
        advice = (": the padding row's logits reach some arithmetic (a softmax of inf is NaN), and "
                  "its NaN gradient would reach a model's weights. Index the kept rows out of "
                  "the logits first, and compute the log-probabilities of those alone")
    return (f"the values are right, but on {described} the gradient with respect to the logits "
            f"is {got}, not (softmax - one-hot) / 2 on the kept rows and 0 on the padding row, "
            f"{rounded(want)}{advice}")


_LOSSES_CE_MISTAKES = [
    (_losses_padding_not_finite,
     "A left-out example's loss is inf or NaN here, and multiplying it by a mask of 0 still "
     "gives NaN (0 × inf): leave the examples out by indexing, before computing their "
     "log-probabilities."),
    (_losses_gives(_losses_ce_over_n),
     "That divides by all N examples, padding included: the mean is over the examples kept, "
     "so divide by their number."),
    (_losses_gives(lambda z, y, ignore_index=-100: torch.nn.functional.cross_entropy(z, y)),
     "The examples whose target equals ignore_index (here not -100) must be left out: "
     "compare the targets with the argument ignore_index."),
    (_losses_not_finite,
     "log(softmax(z)) overflows for large logits (exp(1000) is inf): take the "
     "log-probabilities from your log_softmax, which subtracts the maximum first."),
    (_losses_gives(lambda z, y: _losses_rows(torch.log_softmax(z, -1), y).mean()),
     "The sign is wrong: the loss is the negative log-probability of the right class, "
     "-log p[i, y_i], which is never below 0."),
    (_losses_gives(lambda z, y: -_losses_rows(torch.log_softmax(z, -1), y).sum()),
     "That is the sum over the batch: divide by the number of examples."),
    (_losses_gives(lambda z, y: -torch.log_softmax(z, -1)[:, y].mean()),
     "log_p[:, targets] picks an N × N block (every example's log-probability of every "
     "example's target): pick one entry per row, log_p[torch.arange(N), targets]."),
    (_losses_gives(lambda z, y: -(torch.log_softmax(z, -1)
                                   * torch.nn.functional.one_hot(y, z.shape[-1])).mean()),
     "That divides by N × C: sum over the classes, then average over the examples only."),
    (_losses_gives(lambda z, y: -_losses_rows(torch.softmax(z, -1), y).mean()),
     "That averages the probabilities of the right classes: the loss is minus their logarithm."),
    (_losses_gives(lambda z, y, ignore_index=-100: torch.nn.functional.cross_entropy(
        torch.softmax(z, -1), y, ignore_index=ignore_index)),
     "The logits were turned into probabilities (softmax) before the log-softmax: cross-entropy "
     "takes the logits themselves, and its log-softmax does the normalising."),
]


register(Exercise(
    name="losses.cross_entropy",
    title="Write cross-entropy that leaves out padding",
    practises="picking one log-probability per row; leaving examples out of the mean "
              "(ignore_index)",
    minutes=15,
    hint="combine the sections \"Cross-entropy\" (one log-probability per row) and \"Reductions "
         "and the gradient's scale\" (leaving examples out of the mean); a target of -100 cannot "
         "pick a log-probability.",
    judge=_losses_judge(_losses_ce_cases, _losses_true_ce, _LOSSES_CE_MISTAKES, then=_losses_ce_gradient),
    hidden=_losses_hidden(_losses_hidden_ce, _losses_true_ce, _LOSSES_CE_MISTAKES,
                          "any logits and targets, whatever ignore_index is"),
))


# --- Chapter: Optimizers: from gradient descent to AdamW (book/optimizers.ipynb) ---


def _torch_adam_step(param, grad, exp_avg, exp_avg_sq, step, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                     weight_decay=0.0):
    """Adam's update number `step` by torch.optim.Adam itself, from the given averages."""
    p = param.detach().clone()
    p.grad = grad.detach().clone()
    optimizer = torch.optim.Adam([p], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                 foreach=False)
    optimizer.state[p] = {"step": torch.tensor(float(step - 1)), "exp_avg": exp_avg.clone(),
                          "exp_avg_sq": exp_avg_sq.clone()}
    optimizer.step()
    state = optimizer.state[p]
    return p, state["exp_avg"], state["exp_avg_sq"]


def _adam_variant(bias_correct_m=True, bias_correct_v=True, eps_inside_sqrt=False,
                  eps_squared_inside_sqrt=False, decoupled_decay=False, ignore_decay=False, uphill=False,
                  next_step=False, keeps_corrected=False):
    """Adam written with one of the usual slips, to recognise it in an answer."""
    def step_(param, grad, exp_avg, exp_avg_sq, step, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
              weight_decay=0.0):
        beta1, beta2 = betas
        if ignore_decay:
            pass
        elif decoupled_decay:  # AdamW's decay, where torch.optim.Adam adds an L2 penalty
            param = param * (1 - lr * weight_decay)
        else:
            grad = grad + weight_decay * param
        m = beta1 * exp_avg + (1 - beta1) * grad
        v = beta2 * exp_avg_sq + (1 - beta2) * grad**2
        t = step + 1 if next_step else step
        m_hat = m / (1 - beta1**t) if bias_correct_m else m
        v_hat = v / (1 - beta2**t) if bias_correct_v else v
        if eps_inside_sqrt or eps_squared_inside_sqrt:
            denominator = (v_hat + (eps if eps_inside_sqrt else eps**2)).sqrt()
        else:
            denominator = v_hat.sqrt() + eps
        update = lr * m_hat / denominator
        new_param = param + update if uphill else param - update
        return (new_param, m_hat, v_hat) if keeps_corrected else (new_param, m, v)
    return step_


def _adam_cases() -> list[Case]:
    g = torch.Generator().manual_seed(4)
    param, grad = torch.randn(4, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    exp_avg = 0.1 * torch.randn(4, generator=g, dtype=torch.float64)
    exp_avg_sq = 0.1 * torch.rand(4, generator=g, dtype=torch.float64)
    zeros = torch.zeros(4, dtype=torch.float64)
    return [
        Case((param, grad, zeros, zeros, 1), "the first step (step=1, averages at zero)"),
        Case((param, grad, exp_avg, exp_avg_sq, 3), "step=3 with non-zero averages"),
        Case((param, grad, exp_avg, exp_avg_sq, 2), "step=2, lr=0.1, betas=(0.5, 0.9)",
             dict(lr=0.1, betas=(0.5, 0.9))),
        # An entry of the size of eps tells sqrt(v_hat) + eps from sqrt(v_hat + eps**2).
        Case((param, torch.tensor([0.0, 1e-9, -1e-6, 2.0], dtype=torch.float64), zeros, zeros, 1),
             "a gradient [0.0, 1e-09, -1e-06, 2.0] (zero, tiny and eps-sized entries), eps=1e-6",
             dict(eps=1e-6)),
        Case((param, grad, exp_avg, exp_avg_sq, 3), "step=3, lr=0.1, weight_decay=0.5",
             dict(lr=0.1, weight_decay=0.5)),
    ]


_ADAM_SLIPS = [
    (_adam_variant(bias_correct_m=False, bias_correct_v=False),
     "The update matches Adam WITHOUT bias correction (the article's formula): divide m by "
     "1 - beta1**step and v by 1 - beta2**step before the update."),
    (_adam_variant(bias_correct_m=False),
     "The update forgets the bias correction of m: divide m by 1 - beta1**step."),
    (_adam_variant(bias_correct_v=False),
     "The update forgets the bias correction of v: divide v by 1 - beta2**step."),
    (_adam_variant(eps_inside_sqrt=True),
     "eps belongs outside the square root: the denominator is sqrt(v_hat) + eps, not "
     "sqrt(v_hat + eps)."),
    (_adam_variant(eps_squared_inside_sqrt=True),
     "eps belongs outside the square root: the denominator is sqrt(v_hat) + eps, not "
     "sqrt(v_hat + eps**2), which differs where a gradient entry is about eps in size or smaller."),
    (_adam_variant(decoupled_decay=True),
     "That is AdamW's decoupled decay: torch.optim.Adam's weight_decay is an L2 penalty, "
     "added to the gradient (grad + weight_decay * param) before the averages."),
    (_adam_variant(ignore_decay=True),
     "weight_decay is ignored: torch.optim.Adam adds weight_decay * param to the gradient "
     "before the averages."),
    (_adam_variant(uphill=True),
     "The step goes uphill: it adds lr * m_hat / (sqrt(v_hat) + eps) to the parameter; a "
     "descent step takes it away."),
    (_adam_variant(next_step=True),
     "The bias correction uses step + 1: step is already the number of this update (1 on the "
     "first), so divide by 1 - beta1**step and 1 - beta2**step."),
    (_adam_variant(keeps_corrected=True),
     "The new parameter is right, but the averages returned are the bias-corrected m_hat and "
     "v_hat: return m and v themselves, which the next step corrects again."),
]


def _optimizer_judge(cases: Callable[[], list[Case]], step: Callable, slips, parts: tuple[str, ...],
                     atol=1e-9, rtol=1e-7, then: Callable[[Callable], str | None] | None = None):
    """A judge of one optimizer step against ``step`` (PyTorch's); a wrong result is compared with
    each of the usual ``slips`` (the same step written with one mistake), and a match is named."""
    def explain(got, want, *args, **kwargs) -> str:
        for slip, explanation in slips:
            try:
                compare(got, tuple(slip(*args, **kwargs)), atol, rtol)
            except Exception:  # not this slip (it may not even run on this case)
                continue
            return explanation
        return ""
    return judge_cases(cases, lambda *args, **kwargs: _parts(parts, step(*args, **kwargs)), explain,
                       atol=atol, rtol=rtol, then=then)


register(Exercise(
    name="optimizers.adam_step",
    title="One step of Adam, with bias correction",
    practises="Adam's averages, bias correction and update from a saved state; its L2 weight "
              "decay; against torch.optim.Adam",
    minutes=15,
    hint="one pass of the loop of adam_by_hand (section \"Adam, with bias correction\"), from the "
         "averages given; torch.optim.Adam's weight_decay is the L2 penalty of the section on "
         "weight decay, not AdamW's decay.",
    judge=_optimizer_judge(_adam_cases, _torch_adam_step, _ADAM_SLIPS,
                           ("the new param", "exp_avg", "exp_avg_sq")),
))


def _torch_momentum_step(param, grad, buffer, lr, momentum, dampening=0.0, nesterov=False):
    """One step of torch.optim.SGD with momentum, from the given buffer (None: the first step)."""
    p = param.detach().clone()
    p.grad = grad.detach().clone()
    optimizer = torch.optim.SGD([p], lr=lr, momentum=momentum, dampening=dampening,
                                nesterov=nesterov, foreach=False)
    if buffer is not None:
        optimizer.state[p] = {"momentum_buffer": buffer.clone()}
    optimizer.step()
    return p, optimizer.state[p]["momentum_buffer"]


def _textbook_momentum(param, grad, buffer, lr, momentum, dampening=0.0, nesterov=False):
    velocity = -lr * grad if buffer is None else momentum * buffer - lr * grad
    return param + velocity, velocity


def _momentum_damped_from_the_start(param, grad, buffer, lr, momentum, dampening=0.0, nesterov=False):
    b = (1 - dampening) * grad if buffer is None else momentum * buffer + (1 - dampening) * grad
    return param - lr * (grad + momentum * b if nesterov else b), b


def _momentum_first_step_without_nesterov(param, grad, buffer, lr, momentum, dampening=0.0, nesterov=False):
    if buffer is None:
        return param - lr * grad, grad.clone()
    return _torch_momentum_step(param, grad, buffer, lr, momentum, dampening, nesterov)


def _momentum_without_nesterov(param, grad, buffer, lr, momentum, dampening=0.0, nesterov=False):
    b = grad.clone() if buffer is None else momentum * buffer + (1 - dampening) * grad
    return param - lr * b, b


def _momentum_undamped(param, grad, buffer, lr, momentum, dampening=0.0, nesterov=False):
    return _torch_momentum_step(param, grad, buffer, lr, momentum, 0.0, nesterov)


def _momentum_cases() -> list[Case]:
    g = torch.Generator().manual_seed(5)
    param, grad = torch.randn(3, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)
    buffer = torch.randn(3, generator=g, dtype=torch.float64)
    return [
        Case((param, grad, None, 0.1, 0.9), "the first step (buffer=None), lr=0.1, momentum=0.9"),
        Case((param, grad, buffer, 0.1, 0.9), "a later step (a buffer given), lr=0.1, momentum=0.9"),
        Case((param, grad, None, 0.1, 0.9, 0.5), "the first step with dampening=0.5"),
        Case((param, grad, buffer, 0.05, 0.8, 0.5), "a later step with dampening=0.5"),
        Case((param, grad, buffer, 0.1, 0.9), "a later step with nesterov=True", dict(nesterov=True)),
        Case((param, grad, None, 0.1, 0.9), "the first step with nesterov=True", dict(nesterov=True)),
    ]


_MOMENTUM_SLIPS = [
    (_textbook_momentum,
     "The answer is the textbook form (v <- momentum * v - lr * g; param <- param + v); PyTorch's "
     "buffer sums gradients, b <- momentum * b + (1 - dampening) * g, and the step is param <- "
     "param - lr * b."),
    (_momentum_damped_from_the_start,
     "The first step dampens the gradient; PyTorch starts the buffer at the gradient itself, "
     "b <- g, and dampens only later steps."),
    (_momentum_first_step_without_nesterov,
     "The first step ignores nesterov=True: with Nesterov it too moves by lr * (g + momentum * b), "
     "with b = g, that is by lr * (1 + momentum) * g."),
    (_momentum_undamped,
     "dampening is ignored: after the first step, the buffer adds (1 - dampening) times the "
     "gradient, b <- momentum * b + (1 - dampening) * g."),
    # With dampening 0, Nesterov written with the buffer from before the update,
    # g + momentum * b_old, is plain momentum too: the message fits both slips.
    (_momentum_without_nesterov,
     "The step equals plain momentum's, lr * b, as when nesterov=True is ignored or uses the "
     "buffer from before this step's update: with Nesterov the step is lr * (g + momentum * b), "
     "where b is the buffer after the update."),
]


def _momentum_buffer_is_its_own(answer: Callable) -> str | None:
    """Once the steps are right: the first step's buffer must be a copy of the gradient, as
    PyTorch's is, not the gradient tensor, which zero_grad() or the next backward() changes in
    place."""
    param, grad = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([0.3, -0.2, 0.1])
    label = "the first step (buffer=None), lr=0.1, momentum=0.9"
    _, buffer = call_answer(answer, label, param, grad, None, 0.1, 0.9)
    kept = buffer.detach().clone()
    grad.zero_()  # what optimizer.zero_grad(set_to_none=False) does to .grad
    if not torch.equal(buffer, kept):
        return (f"on {label}, the new buffer is the gradient tensor itself, not a copy: zero_grad() or "
                f"the next backward(), which change .grad in place, would change the buffer too. Start "
                f"it as grad.clone(), as torch.optim.SGD does")
    return None


register(Exercise(
    name="optimizers.momentum_step",
    title="One step of SGD with momentum, PyTorch's form",
    practises="the momentum buffer, dampening and Nesterov, against torch.optim.SGD",
    minutes=10,
    hint="PyTorch's form of the section \"Momentum: PyTorch's form and the textbook form\" (its "
         "first step and dampening are described at the end of that section), and PyTorch's "
         "form of \"Nesterov momentum\".",
    judge=_optimizer_judge(_momentum_cases, _torch_momentum_step, _MOMENTUM_SLIPS,
                           ("the new param", "the new buffer"), then=_momentum_buffer_is_its_own),
))


def _judge_learning_rate(answer) -> str | None:
    """Gradient descent (torch.optim.SGD) with the answer's rate on (a x² + b y²)/2 from (1, 1)."""
    steps, tolerance = 100, 1e-2
    for a, b in [(1.0, 20.0), (1.0, 5.0), (4.0, 10.0), (0.1, 1.0), (20.0, 2.0)]:
        lr = call_answer(answer, f"a={a}, b={b}", a, b)
        if isinstance(lr, torch.Tensor) and lr.numel() == 1:
            lr = lr.item()
        if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not math.isfinite(lr):
            return f"for a={a}, b={b}, expected a learning rate (a number), got {_describe(lr)}"
        lr = float(lr)  # a NumPy float or a Fraction is a number too
        if lr <= 0:
            return f"for a={a}, b={b}, the answer gave lr={lr:g}: a learning rate must be positive"
        xy = torch.ones(2, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.SGD([xy], lr=lr)
        for _ in range(steps):
            optimizer.zero_grad()
            (0.5 * (a * xy[0] ** 2 + b * xy[1] ** 2)).backward()
            optimizer.step()
        distance = xy.detach().abs().max().item()
        if distance <= tolerance:
            continue
        factors = {"x": 1 - lr * a, "y": 1 - lr * b}  # what one step multiplies each coordinate by
        worst = max(factors, key=lambda k: abs(factors[k]))
        if abs(factors[worst]) >= 1:
            return (f"for a={a}, b={b}, lr={lr:g} does not converge: each step multiplies {worst} by "
                    f"1 - lr * {a if worst == 'x' else b} = {factors[worst]:.3g}, whose size is not below 1. "
                    f"Keep lr below 2 / {max(a, b)} = {2 / max(a, b):.3g} (2 over the largest curvature).")
        if factors[worst] < 0:  # the steep coordinate overshoots: the rate is too close to the limit
            advice = ("It overshoots the minimum at every step: a smaller rate does better, one that "
                      "balances this factor against the other coordinate's.")
        else:
            advice = f"A larger rate, still below 2 / {max(a, b)}, does better."
        return (f"for a={a}, b={b}, lr={lr:g} converges but too slowly: after {steps} steps {worst} is "
                f"still {xy.detach()[0 if worst == 'x' else 1].item():.3g}, because each step multiplies "
                f"it by {factors[worst]:.3g}. {advice}")
    return None


register(Exercise(
    name="optimizers.learning_rate",
    function="converging_learning_rate",
    title="Pick a learning rate that converges on the quadratic",
    practises="the stability limit lr < 2 / (largest curvature), and the speed set by the "
              "largest factor |1 - lr * curvature|",
    minutes=15,
    hint="the section \"Gradient descent, as the article writes it\": a step multiplies each "
         "coordinate's distance to the minimum by its own factor. Find the rates for which both "
         "factors are below 1 in size, and see which of the two sets the speed.",
    judge=_judge_learning_rate,
))


# --- Chapter: Loading data: datasets, loaders and CIFAR-10 (book/data.ipynb) ---


def _data_images(seed: int, n: int, height: int, width: int, scale: tuple[int, int, int]) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, height, width), generator=gen)
    return (images * torch.tensor(scale)[:, None, None] // 255).to(torch.uint8)


def _data_stats_cases() -> list[Case]:
    return [
        Case((_data_images(0, 4, 5, 6, (255, 255, 255)),), "4 random uint8 images of shape (3, 5, 6)"),
        Case((_data_images(1, 6, 3, 3, (255, 128, 30)),), "6 images whose channels have different ranges"),
        Case((_data_images(2, 1, 4, 4, (200, 200, 200)),), "a single image (N = 1)"),
    ]


def _data_hidden_images(generator: torch.Generator) -> list[Case]:
    """Batches of 1 to 6 images of 1 to 8 pixels a side, each channel with its own range."""
    cases = []
    for _ in range(30):
        n, height, width = _draw_int(generator, 1, 6), _draw_int(generator, 1, 8), _draw_int(generator, 1, 8)
        top = torch.randint(1, 256, (3, 1, 1), generator=generator)  # each channel's largest value
        images = (torch.randint(0, 256, (n, 3, height, width), generator=generator) * top // 255).to(torch.uint8)
        cases.append(Case((images,), f"{n} images of shape (3, {height}, {width})"))
    return cases


def _data_true_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from helpers.fast import channel_stats  # the same statistics, on one uint8 tensor

    return _parts(("mean", "std"), channel_stats(images))


def _data_stats_mistake(got: Any, want: Any, images: torch.Tensor) -> str:
    """Name the usual mistake behind a wrong (mean, std), or return ''."""
    x = images.double()
    candidates = [
        (lambda: torch.std_mean(x, dim=(0, 2, 3), correction=0)[::-1],
         "Those are the statistics of the raw 0-255 values: divide by 255 first, as the ToDtype "
         "transform (scale=True) does."),
        (lambda: (torch.std_mean(x / 255, dim=(0, 2, 3), correction=1)[1],
                  torch.std_mean(x / 255, dim=(0, 2, 3), correction=1)[0]),
         "That std divides by M - 1 (Bessel's correction); the normalisation uses the population "
         "std, which divides by M: pass correction=0 (or unbiased=False)."),
        (lambda: ((x / 255).mean(dim=(0, 2, 3)), (x / 255).std(dim=(2, 3), correction=0).mean(0)),
         "That std is the average of each image's own std, which leaves out how images differ from "
         "one another: take the std over all pixels of all images at once, dim=(0, 2, 3)."),
        (lambda: torch.std_mean(x / 255, dim=(1, 2, 3), correction=0)[::-1],
         "Those are one mean and std per image: reduce over images, height and width, dim=(0, 2, 3), "
         "to get one per channel."),
        (lambda: torch.std_mean(x / 255, dim=(0, 2, 3), correction=0),
         "Those are the std and the mean, in that order (as torch.std_mean returns them): return "
         "(mean, std)."),
    ]
    for wrong, explanation in candidates:
        mean, std = (t.float() for t in wrong())
        if (isinstance(got, (tuple, list)) and len(got) == 2
                and all(isinstance(g, torch.Tensor) and g.shape == w.shape for g, w in zip(got, (mean, std)))
                and torch.allclose(got[0].float(), mean, atol=1e-5) and torch.allclose(got[1].float(), std, atol=1e-5)):
            return explanation
    return ""


register(Exercise(
    name="data.tensor_mean_std",
    title="Per-channel mean and standard deviation of a tensor of images",
    practises="reducing over the right dimensions; the statistics used to normalise images",
    minutes=10,
    hint="the section \"Mean and standard deviation per channel\" gives the formula, over which pixels it "
         "runs, and which standard deviation it takes; the section on transforms says how uint8 values "
         "become [0, 1]. torch.std_mean can compute both at once.",
    judge=judge_cases(_data_stats_cases, _data_true_stats, _data_stats_mistake, atol=1e-5, rtol=1e-4),
    hidden=HiddenCases(_data_hidden_images, _data_true_stats, explain=_data_stats_mistake, atol=1e-5, rtol=1e-4,
                       rule="any number and size of images"),
    forbids=([("helpers.fast", "channel_stats", "helpers.fast.channel_stats"),
              ("helpers.data", "channel_mean_std", "helpers.data.channel_mean_std")],
             "the exercise asks for the statistics computed from the tensor, without the course's own "
             "functions that compute them"),
))


def _data_batches_cases() -> list[Case]:
    return [
        Case((10, 4), "10 samples in batches of 4", {"drop_last": False}),
        Case((10, 4), "10 samples in batches of 4 with drop_last=True", {"drop_last": True}),
        Case((12, 4), "12 samples in batches of 4", {"drop_last": False}),
        Case((3, 4), "3 samples in batches of 4 with drop_last=True", {"drop_last": True}),
        Case((45000, 64), "45000 samples in batches of 64", {"drop_last": False}),
    ]


def _data_hidden_batches(generator: torch.Generator) -> list[Case]:
    """Epochs of every kind, in turn: a multiple of the batch size, a number that is not, and
    fewer samples than one batch; each with and without drop_last."""
    cases = []
    for i in range(120):
        batch_size = _draw_int(generator, 2, 1024)
        full_batches = 0 if i % 3 == 2 else _draw_int(generator, 1, 200)
        left_over = 0 if i % 3 == 0 else _draw_int(generator, 1, batch_size - 1)
        num_samples, drop_last = full_batches * batch_size + left_over, i % 2 == 1
        cases.append(Case((num_samples, batch_size), f"{num_samples} samples in batches of {batch_size}",
                          {"drop_last": drop_last}))
    return cases


def _data_loader_length(num_samples: int, batch_size: int, drop_last: bool = False) -> int:
    from torch.utils.data import DataLoader

    return len(DataLoader(range(num_samples), batch_size=batch_size, drop_last=drop_last))


def _data_batches_mistake(got: Any, want: int, num_samples: int, batch_size: int, drop_last: bool = False) -> str:
    """Name the usual mistake behind a wrong number of batches, or return ''; it names no input."""
    if not _is_int(got):  # compare() has said so when the value is right
        return "" if _equals(got, want) else "Return the number of batches as an int"
    got = int(got)
    if not drop_last and got == num_samples // batch_size:
        return ("Without drop_last, the samples left over after the last full batch still form a batch, "
                "a smaller one")
    if drop_last and got == -(-num_samples // batch_size):
        return "With drop_last=True, the samples left over after the last full batch form no batch"
    if num_samples % batch_size == 0 and got == num_samples // batch_size + 1:
        return ("That counts one batch too many when the samples fill the batches exactly: a last, "
                "smaller batch exists only when samples are left over")
    return ""


register(Exercise(
    name="data.batches_per_epoch",
    title="How many batches in an epoch",
    practises="what batch_size and drop_last do to an epoch",
    minutes=5,
    hint="the section \"Batching: the DataLoader stacks examples\" counts the batches of an epoch: what "
         "happens to the examples left over after the last full batch, with and without drop_last?",
    cases=_data_batches_cases,
    expected=_data_loader_length,
    explain=_data_batches_mistake,
    hidden=HiddenCases(_data_hidden_batches, _data_loader_length, explain=_data_batches_mistake,
                       rule="any number of samples and batch size, with and without drop_last"),
))


# --- Chapter: The training loop: a CNN on CIFAR-10 (book/training.ipynb) ---


def _training_conv_cases() -> list[Case]:
    return [
        Case((32, 5), "size 32, kernel 5 (the first layer of the chapter's CNN)"),
        Case((32, 3), "size 32, kernel 3, padding 1", {"padding": 1}),
        Case((7, 2), "size 7, kernel 2, stride 2 (as a 2x2 max-pooling)", {"stride": 2}),
        Case((32, 3), "size 32, kernel 3, dilation 2", {"dilation": 2}),
        Case((32, 3), "size 32, kernel 3, padding 2, dilation 2", {"padding": 2, "dilation": 2}),
        Case((28, 5), "size 28, kernel 5, stride 2, dilation 3", {"stride": 2, "dilation": 3}),
        Case((9, 3), "size 9, kernel 3, dilation 4 (the kernel covers the whole input)", {"dilation": 4}),
    ]


def _training_hidden_convs(generator: torch.Generator) -> list[Case]:
    """Convolutions of random kernel size, stride, padding and dilation, on inputs at least as wide
    as the spread-out kernel."""
    cases = []
    for _ in range(60):
        kernel_size, stride = _draw_int(generator, 1, 7), _draw_int(generator, 1, 4)
        padding, dilation = _draw_int(generator, 0, 3), _draw_int(generator, 1, 4)
        smallest = max(1, dilation * (kernel_size - 1) + 1 - 2 * padding)
        size = _draw_int(generator, smallest, smallest + 40)
        settings = {"stride": stride, "padding": padding, "dilation": dilation}
        cases.append(Case((size, kernel_size), f"size {size}, kernel {kernel_size}, {settings}", settings))
    return cases


def _training_conv_size(size: int, kernel_size: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    conv = torch.nn.Conv2d(1, 1, kernel_size, stride=stride, padding=padding, dilation=dilation)
    with torch.no_grad():
        return conv(torch.zeros(1, 1, size, size)).shape[-1]


def _training_conv_mistake(got: Any, want: int, size: int, kernel_size: int, stride: int = 1, padding: int = 0,
                           dilation: int = 1) -> str:
    """Name the usual mistake behind a wrong output size of a dilated convolution, or return ''; it
    names no input."""
    if _equals(got, want):  # the right value as a float: compare() has said to return an int
        return ""
    if dilation != 1 and got == (size + 2 * padding - kernel_size) // stride + 1:
        return ("That is the size without dilation: spread out, the kernel covers more pixels than "
                "kernel_size, so it fits at fewer positions")
    if dilation != 1 and got == (size + 2 * padding - dilation * kernel_size) // stride + 1:
        return ("That takes the kernel to cover dilation * kernel_size pixels; but its kernel_size taps, "
                "dilation pixels apart, have one gap fewer between them than there are taps")
    span = dilation * (kernel_size - 1) + 1  # the pixels the kernel covers, first tap to last
    if padding > 0 and got == (size - span) // stride + 1:
        return "That leaves the padding out: it adds padding pixels on each side of the input"
    if padding > 0 and got == (size + padding - span) // stride + 1:
        return "That pads one side only: the padding is added on both sides of the input"
    if got == (size + 2 * padding - span) // stride:
        return ("That is one position short: the kernel's first position counts too (the + 1), "
                "then one more per stride that still fits")
    return ""


register(Exercise(
    name="training.conv_output_size",
    title="The size of a dilated convolution's output",
    practises="tracking tensor shapes through convolution and pooling layers; what dilation does",
    minutes=10,
    hint="start from the formula of the section \"Following the shapes\": dilation changes only how many "
         "pixels the kernel covers from its first weight to its last. Draw a 3-wide kernel with dilation 2 "
         "on paper; the shape formula in the documentation of torch.nn.Conv2d confirms your answer.",
    judge=judge_cases(_training_conv_cases, _training_conv_size, _training_conv_mistake),
    hidden=HiddenCases(_training_hidden_convs, _training_conv_size, explain=_training_conv_mistake,
                       rule="any size, kernel size, stride, padding and dilation"),
))


def _training_mean_loss_setup():
    """A small model in training mode, with dropout, and a loader whose last batch is smaller."""
    from torch.utils.data import DataLoader, TensorDataset

    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):  # the learner's random state is left as it was
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Dropout(0.5),
                                    torch.nn.Linear(16, 3))
    inputs, targets = torch.randn(10, 4, generator=gen), torch.randint(0, 3, (10,), generator=gen)
    targets[8:] = int(model[3].bias.argmin())  # the last, small batch is harder than the rest
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=4)
    return model, loader, inputs, targets


def _training_batch_losses(model, loader, loss_fn) -> list[tuple[float, int]]:
    """Each batch's mean loss and size, in eval mode without gradients; the model is then put back
    in training mode."""
    model.eval()
    with torch.no_grad():
        losses = [(loss_fn(model(x), y).item(), len(y)) for x, y in loader]
    model.train()
    return losses


def _training_true_mean_loss(model, loader, loss_fn) -> float:
    losses = _training_batch_losses(model, loader, loss_fn)
    return sum(loss * size for loss, size in losses) / sum(size for _, size in losses)


def _training_mean_of_batch_means(model, loader, loss_fn) -> float:
    """The usual mistake: every batch's mean loss counts once, whatever the batch's size."""
    losses = _training_batch_losses(model, loader, loss_fn)
    return sum(loss for loss, _ in losses) / len(losses)


def _training_mean_loss_mistake(got: Any, want: float, model, loader, loss_fn) -> str:
    """Name the usual mistake behind a wrong mean loss, or return ''; it names no input."""
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if isinstance(got, float) and math.isclose(got, _training_mean_of_batch_means(model, loader, loss_fn),
                                               rel_tol=1e-5):
        return ("That is the mean of the batch means, which gives a smaller last batch as much weight as a "
                "full one: weight each batch's mean loss by its size and divide by the number of examples")
    losses = _training_batch_losses(model, loader, loss_fn)
    total, seen = sum(loss * size for loss, size in losses), sum(size for _, size in losses)
    if isinstance(got, float) and math.isclose(got, total / len(loader), rel_tol=1e-5):
        return ("That divides the sum of the losses by the number of batches, len(loader): divide by "
                "the number of examples")
    if (isinstance(got, float) and seen != len(loader.dataset)
            and math.isclose(got, total / len(loader.dataset), rel_tol=1e-5)):
        return ("That divides by len(loader.dataset), but a loader need not give every example of its "
                "dataset (drop_last=True leaves out a last, smaller batch; a sampler may take a part): "
                "divide by the number of examples in the batches themselves")
    plain = torch.nn.CrossEntropyLoss()
    if (getattr(loss_fn, "label_smoothing", None) != 0.0 and isinstance(got, float)
            and math.isclose(got, _training_true_mean_loss(model, loader, plain), rel_tol=1e-5)):
        return "That is the mean cross-entropy, whatever loss_fn is: compute each batch's loss with loss_fn"
    return ""


def _training_hidden_mean_losses(generator: torch.Generator) -> list[Case]:
    """Random models with dropout, in training mode, and loaders whose last batch is often smaller.
    Their weights come from ``generator``: the learner's global random state is left alone."""
    from torch.utils.data import DataLoader, TensorDataset

    cases = []
    for _ in range(8):
        features, width, classes = _draw_int(generator, 2, 6), _draw_int(generator, 4, 16), _draw_int(generator, 2, 5)
        model = torch.nn.Sequential(torch.nn.utils.skip_init(torch.nn.Linear, features, width), torch.nn.ReLU(),
                                    torch.nn.Dropout(0.5), torch.nn.utils.skip_init(torch.nn.Linear, width, classes))
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
        num_samples, batch_size = _draw_int(generator, 5, 40), _draw_int(generator, 2, 8)
        inputs = torch.randn(num_samples, features, generator=generator)
        targets = torch.randint(0, classes, (num_samples,), generator=generator)
        loader = DataLoader(TensorDataset(inputs, targets), batch_size=batch_size)
        # Every other loss is not plain cross-entropy: an answer must call the loss_fn it is given.
        loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.2 if len(cases) % 2 else 0.0)
        cases.append(Case((model, loader, loss_fn), f"a model of {features} inputs and {classes} classes, "
                          f"{num_samples} examples in batches of {batch_size}"))
    # Loaders that give only part of their dataset, with the last model: 10 examples in batches of
    # 4 cut by drop_last to 8, and every other example of the 10.
    dataset = TensorDataset(torch.randn(10, features, generator=generator),
                            torch.randint(0, classes, (10,), generator=generator))
    for loader, which in ((DataLoader(dataset, batch_size=4, drop_last=True), "drop_last=True"),
                          (DataLoader(dataset, batch_size=4, sampler=range(0, 10, 2)), "a sampler")):
        cases.append(Case((model, loader, torch.nn.CrossEntropyLoss()), f"the last model, with {which}"))
    return cases


def _training_judge_mean_loss(answer: Callable) -> str | None:
    model, loader, inputs, targets = _training_mean_loss_setup()
    loss_fn = torch.nn.CrossEntropyLoss()
    model.eval()
    with torch.no_grad():
        want = loss_fn(model(inputs), targets).item()
    model.train()
    mean_of_batch_means = _training_mean_of_batch_means(model, loader, loss_fn)
    seen = []  # (graph recorded, dropout active) at every layer the answer runs, and at every loss
    for layer in model:  # not the model itself: model.forward(x) would pass its hooks by
        layer.register_forward_hook(lambda module, args, output: seen.append((torch.is_grad_enabled(),
                                                                              module.training)))
    # The loss sees the outputs however the model was run (even layer by layer, by forward()).
    dropout = next(layer for layer in model if isinstance(layer, torch.nn.Dropout))
    loss_fn.register_forward_pre_hook(lambda module, args: seen.append((args[0].requires_grad, dropout.training)))
    label = "a model with dropout and a loader of 10 examples in batches of 4, 4 and 2"
    got = call_answer(answer, label, model, loader, loss_fn)
    # The check runs under torch.enable_grad(), which hides from the other checks an answer that
    # switches gradients off for good (torch.set_grad_enabled(False) as a call): see it here.
    grad_left_off = not torch.is_grad_enabled()
    torch.set_grad_enabled(True)
    if isinstance(got, torch.Tensor):
        return (f"on {label}, expected a Python float, got {_describe(got)}: return the mean loss "
                f"as a float (.item() or float(...))")
    if not isinstance(got, float):
        return f"on {label}, expected a float, got {type(got).__name__} {_describe(got)}"
    if any(training for _, training in seen):
        return (f"on {label}, the model was in training mode during the evaluation, so dropout was "
                f"active: call model.eval() before the loop")
    if any(grad for grad, _ in seen):
        return (f"on {label}, the forward passes recorded a graph for gradients: wrap the loop in "
                f"torch.no_grad() (or decorate the function with @torch.no_grad())")
    if grad_left_off:
        return (f"on {label}, gradients were still switched off after the function returned, so "
                f"training after it would record no graph: use `with torch.no_grad():`, which "
                f"switches them back on at its end")
    if not model.training:
        return f"on {label}, the model was left in eval mode: put it back with model.train() at the end"
    if loss_fn.reduction != "mean":
        return (f"on {label}, loss_fn.reduction was left at {loss_fn.reduction!r}: the caller's loss "
                f"function is changed for good, and training with it afterwards would not average. Leave "
                f"loss_fn as it is, and multiply each batch's mean loss by the batch's size")
    if math.isclose(got, mean_of_batch_means, rel_tol=1e-5) and not math.isclose(got, want, rel_tol=1e-5):
        return (f"on {label}, expected {want:.6g}, got {got:.6g}: that is the mean of the three batch "
                f"means, which gives the last batch of 2 as much weight as the batches of 4. Weight "
                f"each batch's mean loss by its size and divide by the number of examples")
    if not math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-7):
        # The batch means are named above, with this loader's sizes; the other slips as for any loader.
        explanation = _training_mean_loss_mistake(got, want, model, loader, loss_fn)
        return f"on {label}, expected {want:.6g}, got {got:.6g}" + (
            f". {explanation}" if explanation else "")
    return None


register(Exercise(
    name="training.mean_loss",
    title="The mean loss over a loader",
    practises="evaluation mode, torch.no_grad, and averaging over examples rather than batches",
    minutes=10,
    hint="the section \"What the loop leaves out\" names the two switches an evaluation needs, and the "
         "section after it explains why a batch's mean loss must count as many times as it has examples.",
    judge=_training_judge_mean_loss,
    hidden=HiddenCases(_training_hidden_mean_losses, _training_true_mean_loss,
                       explain=_training_mean_loss_mistake, rule="any model and loader"),
))


# --- Chapter: Autograd, from the chain rule to a working engine (book/autograd.ipynb) ---


def _judge_sigmoid_op(answer: Callable) -> str | None:
    from helpers.engine import Value

    def sigmoid(x: float) -> float:
        return 1.0 / (1.0 + math.exp(-x))

    def close(a: float, b: float) -> bool:  # float32 arithmetic (torch.sigmoid) is close enough
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)

    def shown(got: float, want: float) -> tuple[str, str]:  # 4 digits, or as many as tell them apart
        digits = next((d for d in (4, 7, 10) if f"{got:.{d}g}" != f"{want:.{d}g}"), 17)
        return f"{got:.{digits}g}", f"{want:.{digits}g}"

    for x in (-2.0, 0.0, 0.7, 3.0):
        v = Value(x)
        out = call_answer(answer, f"v = Value({x:g})", v)
        if not isinstance(out, Value):
            return (f"sigmoid(v) returned a {type(out).__name__}, not a Value: build the result with "
                    f"Value(number, (v,), 'sigmoid')")
        s = sigmoid(x)
        if not close(out.data, s):
            got, want = shown(out.data, s)
            return f"sigmoid(v).data is {got} at v = {x:g}, but sigmoid({x:g}) = {want}"
        if len(out._parents) != 1 or out._parents[0] is not v:
            return ("sigmoid(v) should be one new Value whose only parent is v, with its own backward "
                    "closure; this one was built from other operations of the engine")
        backward_of_answer(out, f"v = Value({x:g})")
        if not close(v.grad, s * (1 - s)):
            hint = ": set out._backward to a closure that adds to v.grad" if v.grad == 0 else ""
            got, want = shown(v.grad, s * (1 - s))
            return f"after sigmoid(v).backward() at v = {x:g}, v.grad is {got} but should be {want}{hint}"

    v = Value(1.0)  # the closure must scale by the gradient it is given, here 3
    label = "v = Value(1), in sigmoid(v) * 3"
    backward_of_answer(call_answer(answer, label, v) * 3, label)
    s = sigmoid(1.0)
    if not close(v.grad, 3 * s * (1 - s)):
        hint = (": multiply the local derivative by the gradient the closure receives"
                if close(v.grad, s * (1 - s)) else "")
        got, want = shown(v.grad, 3 * s * (1 - s))
        return f"on sigmoid(v) * 3, v.grad is {got} but should be {want}{hint}"

    v = Value(1.5)  # v reaches the output along two paths; the closure must add, not overwrite
    label = "v = Value(1.5), in sigmoid(v) * v"
    backward_of_answer(call_answer(answer, label, v) * v, label)
    s = sigmoid(1.5)
    right, overwritten = s * (1 - s) * 1.5 + s, s * (1 - s) * 1.5
    if not close(v.grad, right):
        hint = ": add to v.grad (+=) instead of overwriting it" if close(v.grad, overwritten) else ""
        got, want = shown(v.grad, right)
        return (f"on sigmoid(v) * v, where v also receives a gradient along another path, v.grad is "
                f"{got} but should be {want}{hint}")
    return None


register(Exercise(
    name="autograd.sigmoid_op",
    function="sigmoid",
    title="Add an operation to the engine",
    practises="local derivatives; backward closures that accumulate into .grad",
    minutes=15,
    hint="build it as Value.tanh is built (its source is printed in the section \"A small "
         "reverse-mode engine\"): one new Value whose parent is v, and a closure that adds "
         "to v.grad.",
    judge=_judge_sigmoid_op,
))


def _judge_train_step(answer: Callable) -> str | None:
    import copy

    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(0)  # the learner's global random state is left alone
    model = torch.nn.utils.skip_init(torch.nn.Linear, 3, 2)
    with torch.no_grad():
        model.weight.copy_(torch.randn(2, 3, generator=generator))
        model.bias.copy_(torch.randn(2, generator=generator))
    reference = copy.deepcopy(model)
    # Where the exercise's handed-out code takes the parameters: its .grad sums the gradients of
    # every step so far. An answer that lands there is told the symptom, not the fix.
    handed_out, summed = copy.deepcopy(model), None
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    # A hand-written p -= 0.1 * p.grad matches SGD(lr=0.1) exactly: count the optimizer's steps.
    steps = []
    optimizer.register_step_post_hook(lambda optimizer, args, kwargs: steps.append(1))
    batches = [(torch.randn(4, 3, generator=generator), torch.randn(4, 2, generator=generator))
               for _ in range(3)]
    for k, (inputs, targets) in enumerate(batches, start=1):
        before = [p.detach().clone() for p in model.parameters()]
        steps.clear()
        loss = call_answer(answer, f"batch {k}", model, optimizer, inputs, targets)
        # What the step must do: one step of gradient descent on this batch's loss alone.
        expected_loss = F.mse_loss(reference(inputs), targets)
        grads = torch.autograd.grad(expected_loss, list(reference.parameters()))
        with torch.no_grad():
            for p, g in zip(reference.parameters(), grads):
                p -= 0.1 * g
        handed_out_grads = torch.autograd.grad(F.mse_loss(handed_out(inputs), targets),
                                               list(handed_out.parameters()))
        summed = handed_out_grads if summed is None else [s + g for s, g in zip(summed, handed_out_grads)]
        with torch.no_grad():
            for p, g in zip(handed_out.parameters(), summed):
                p -= 0.1 * g
        if isinstance(loss, torch.Tensor):
            # A tensor that requires a gradient keeps the step's whole graph alive: a list of them
            # (a loss curve) holds every step's activations. The chapter says to use .item().
            held = " that holds the step's graph (grad_fn set)" if loss.grad_fn is not None else ""
            return (f"train_step returned the loss as a tensor{held}: return loss.item(), a Python "
                    f"number, so that storing the losses keeps no tensors (and no graphs) alive")
        if isinstance(loss, bool) or not isinstance(loss, (int, float)):
            return f"train_step should return the loss as a number (loss.item()), got {type(loss).__name__}"
        if not math.isclose(loss, expected_loss.item(), rel_tol=1e-5, abs_tol=1e-6):
            return (f"on batch {k}, train_step returned the loss {loss:.4g}, but the batch's mean squared "
                    f"error before the step is {expected_loss.item():.4g}")
        after = [p.detach() for p in model.parameters()]
        unchanged = all(torch.equal(a, b) for a, b in zip(after, before))
        if not steps:
            moved = "did not change" if unchanged else "moved"
            return (f"on batch {k}, the parameters {moved}, but optimizer.step() was never called: "
                    f"update them with the optimizer that train_step is given")
        if unchanged:
            return (f"after step {k} the parameters did not change: the gradients were zeroed (or never "
                    f"computed) between loss.backward() and optimizer.step()")
        worst = max((a - r).abs().max().item() for a, r in zip(after, reference.parameters()))
        if worst > 1e-5:
            if k == 1:
                return (f"after step 1 the parameters differ from one gradient-descent step on the batch's "
                        f"mean squared error (largest difference {worst:.3g})")
            right = "step 1 is right" if k == 2 else f"steps 1 to {k - 1} are right"
            if all(torch.allclose(a, h, atol=1e-6) for a, h in zip(after, handed_out.parameters())):
                return (f"{right}, but after step {k} the parameters are where the exercise's code "
                        f"takes them: step {k} moved them by the gradients of batch {k} and of the "
                        f"earlier batches together. What does .grad hold when backward() runs in "
                        f"step {k}?")
            return (f"{right}, but after step {k} the parameters differ from one gradient-descent step on "
                    f"batch {k} (largest difference {worst:.3g}), as when gradients left over from earlier "
                    f"steps are added to this one: call optimizer.zero_grad() before loss.backward()")
    return None


register(Exercise(
    name="autograd.train_step",
    title="Find the bug in a training step",
    practises="gradient accumulation; the order zero_grad, forward, backward, step",
    minutes=10,
    hint="the section \"Gradients accumulate until you zero them\": what does .grad hold when "
         "the second step calls backward()?",
    judge=_judge_train_step,
))


def _logistic_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(0)
    cases = []
    for n, d in ((4, 2), (10, 3), (1, 5)):
        X = torch.randn(n, d, generator=generator, dtype=torch.float64)
        t = (torch.rand(n, generator=generator) < 0.5).double()
        w = torch.randn(d, generator=generator, dtype=torch.float64)
        b = torch.randn((), generator=generator, dtype=torch.float64)
        cases.append(Case((X, t, w, b), f"{n} point{'s' if n > 1 else ''} in {d} dimensions"))
    return cases


def _logistic_grad_by_autograd(X, t, w, b):
    import torch.nn.functional as F

    w, b = w.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    loss = F.binary_cross_entropy_with_logits(X @ w + b, t)  # the mean over the points
    return _parts(("the gradient of w", "the gradient of b"), torch.autograd.grad(loss, (w, b)))


def _logistic_slip(sum_not_mean=False, sign=1.0, extra_sigmoid_slope=False, without_b=False):
    """The gradients (w, b) by hand, written with one of the usual slips, to recognise it."""
    def grad(X, t, w, b):
        p = torch.sigmoid(X @ w + (0 if without_b else b))
        error = sign * (p - t)  # dL/dz_i, times n
        if extra_sigmoid_slope:  # sigmoid' counted again, although (p - t) already includes it
            error = error * p * (1 - p)
        n = 1 if sum_not_mean else len(t)
        return X.T @ error / n, error.sum() / n
    return grad


def _logistic_explain(got, want, X, t, w, b) -> str:
    """Name the usual slip behind wrong gradients, or return ''."""
    for slip, explanation in [
        (_logistic_slip(sum_not_mean=True),
         "Those are the gradients of the sum of the losses: the loss is their mean, so divide by "
         "the number of points."),
        (_logistic_slip(sign=-1.0),
         "The sign is flipped (each entry is minus the right one): the loss is minus the "
         "log-likelihood, so check the sign of its derivative with respect to p_i."),
        (_logistic_slip(extra_sigmoid_slope=True),
         "There is one factor sigmoid'(z_i) = p_i (1 - p_i) too many: multiply the derivative of "
         "the loss with respect to p_i by sigmoid'(z_i) once, and simplify the product."),
        (_logistic_slip(without_b=True),
         "The bias b is left out of the logits: z_i = x_i . w + b."),
    ]:
        try:
            compare(got, tuple(slip(X, t, w, b)), 1e-9, 1e-7)
        except Exception:  # not this slip
            continue
        return explanation
    try:  # within a millionth, but not within float64's rounding: rounded or estimated, not exact
        compare(tuple(torch.as_tensor(g, dtype=torch.float64) for g in got), want, 1e-6, 1e-4)
    except Exception:
        return ""
    if any(isinstance(g, torch.Tensor) and g.dtype != torch.float64 for g in got):
        return ("The gradients were computed in float32 somewhere (torch.zeros without dtype=X.dtype, "
                ".float()), which rounds them: keep float64, the inputs' dtype, throughout.")
    return ("Those are close to the gradients but not equal to them, as finite differences, or a "
            "float32 step along the way, give: derive the formula with the chain rule, and keep "
            "float64 throughout; it is exact up to float64's rounding.")


register(Exercise(
    name="autograd.logistic_grad",
    title="Compute a gradient by hand",
    practises="the chain rule on a mean loss; gradient shapes",
    minutes=15,
    hint="the chain rule as in the section \"The chain rule, by hand\", one local derivative "
         "at a time: one point's loss with respect to p_i, p_i with respect to its logit "
         "z_i = x_i . w + b (sigmoid' = sigmoid (1 - sigmoid)), then z_i with respect to w and b. "
         "Multiply them out and simplify; mind the mean over N and the shapes of w and b.",
    cases=_logistic_cases,
    expected=_logistic_grad_by_autograd,
    explain=_logistic_explain,
    # float64 rounding: a formula is exact to about 1e-16, finite differences only to about 1e-10.
    atol=1e-12,
    rtol=1e-10,
    forbids=([(torch.autograd, "grad", "torch.autograd.grad"),
              (torch.autograd, "backward", "backward()"),
              (torch.Tensor, "backward", "backward()"),
              # torch.func.jacfwd and torch.autograd.forward_ad make dual numbers with it.
              (torch, "_make_dual", "forward-mode autograd")],
             "the exercise asks for the gradient by hand, without autograd"),
))


# --- Chapter: Making training fast, measured step by step (book/fast_training.ipynb) ---


def _fast_smoothing_cases() -> list[Case]:
    """Batches with ignored targets: -100 (PyTorch's default), an ignored class inside [0, K),
    none ignored, and all ignored (where the mean is over no rows: NaN, as PyTorch gives)."""
    generator = torch.Generator().manual_seed(0)
    cases = []
    for n, k, smoothing, ignore_index, ignored in ((6, 4, 0.1, 2, None), (5, 10, 0.2, -100, [1, 3]),
                                                   (6, 3, 0.0, -100, [0]), (4, 10, 0.5, -100, []),
                                                   (3, 5, 0.2, -100, [0, 1, 2])):
        logits = 3 * torch.randn(n, k, generator=generator)
        targets = torch.randint(0, k, (n,), generator=generator)
        if ignored is None:  # an ignored class inside [0, K): make sure it occurs, and not only it
            targets[:2] = torch.tensor([ignore_index, (ignore_index + 1) % k])
        else:
            targets[ignored] = ignore_index
        cases.append(Case((logits, targets, smoothing, ignore_index), f"{n} rows of {k} logits with "
                          f"smoothing {smoothing}, ignore_index={ignore_index} and targets {targets.tolist()}"))
    return cases


def _fast_hidden_smoothing(generator: torch.Generator) -> list[Case]:
    """Batches of 1 to 8 rows of 2 to 10 classes, some of whose targets are ignored (-100, or a
    class given as ignore_index), with smoothing from 0 to 0.5; at least one row is kept."""
    cases = []
    for i in range(20):
        n, classes = _draw_int(generator, 1, 8), _draw_int(generator, 2, 10)
        logits = 3 * torch.randn(n, classes, generator=generator)
        targets = torch.randint(0, classes, (n,), generator=generator)
        smoothing = _draw_int(generator, 0, 10) / 20
        ignore_index = -100 if i % 2 else _draw_int(generator, 0, classes - 1)
        left_out = torch.rand(n, generator=generator) < 0.3
        left_out[_draw_int(generator, 0, n - 1)] = False
        targets[left_out] = ignore_index
        targets[~left_out & (targets == ignore_index)] = (ignore_index + 1) % classes
        cases.append(Case((logits, targets, smoothing, ignore_index), f"{n} rows of {classes} logits with "
                          f"smoothing {smoothing}, ignore_index={ignore_index} and targets {targets.tolist()}"))
    # Logits as large as a confident model's: exp overflows unless each row is shifted first.
    large = torch.tensor([[100.0, 0.0, -100.0], [0.0, 1000.0, -1000.0]])
    cases.append(Case((large, torch.tensor([2, 1]), 0.1, -100), "2 rows of 3 large logits"))
    return cases


def _fast_large_logits_mistake(got: Any, want: torch.Tensor, logits, targets, smoothing,
                               ignore_index=-100) -> str:
    """On logits of 100 or more, a wrong result is the usual overflow (or a log(p + eps)), which
    a hidden case's failure may name: it says nothing of the case but that its logits are large."""
    if logits.abs().max() < 100:
        return ""
    return ("On large logits (a hundred or more, as a confident model gives), exp(z) overflows to inf "
            "in float32, and a probability that rounds to 0 makes log(p) -inf, or log(p + eps) stop "
            "near log(eps), far above the true log-probability: compute the log-probabilities with a "
            "log-softmax, which subtracts each row's maximum first (F.log_softmax does)")


def _fast_smoothing_gradient(answer: Callable) -> str | None:
    """Once the values are right: the gradient of the smoothed loss, 0 on an ignored row, through
    logits that are a model's output, left as they were."""
    import torch.nn.functional as F

    values = [[2.0, -1.0, 0.5, 0.0], [0.3, 0.0, -0.2, 1.0], [1.0, 3.0, -2.0, 0.5]]
    targets, smoothing = torch.tensor([1, -100, 3]), 0.2
    return _gradient_of_answer(
        answer, f"logits {values} that require a gradient (a model's output), targets {targets.tolist()} "
                f"and smoothing {smoothing}", "the logits", values, (targets, smoothing, -100),
        lambda z, y, s, i: F.cross_entropy(z, y, label_smoothing=s, ignore_index=i))


def _fast_true_smoothing(logits, targets, smoothing, ignore_index=-100) -> torch.Tensor:
    import torch.nn.functional as F

    return F.cross_entropy(logits, targets, label_smoothing=smoothing, ignore_index=ignore_index)


def _fast_smoothing_mistake(got: Any, want: torch.Tensor, logits, targets, smoothing,
                            ignore_index=-100) -> str:
    """Name the usual mistake behind a wrong smoothed cross-entropy, or return ''."""
    import torch.nn.functional as F

    if not isinstance(got, torch.Tensor) or got.shape != ():
        return "Return a 0-dim tensor: the mean loss, shape ()."
    kept = targets != ignore_index
    n_kept, k = int(kept.sum()), logits.shape[1]
    if n_kept == 0:
        return ("Every target is ignored, so the mean is over no rows at all: F.cross_entropy "
                "gives NaN (0 / 0), and so should yours.")

    def close(value: torch.Tensor) -> bool:
        return bool(torch.allclose(got.double(), value.double(), rtol=1e-5, atol=1e-6))

    log_p = F.log_softmax(logits[kept], dim=1)
    onehot = F.one_hot(targets[kept], k).float()
    others_only = (1 - smoothing) * onehot + smoothing / (k - 1) * (1 - onehot)
    mistakes = [
        (close(want * n_kept / len(targets)),
         f"That divides by all {len(targets)} rows; the mean is over the {n_kept} rows whose "
         "target is not ignore_index."),
        (0 <= ignore_index < k and close(F.cross_entropy(logits, targets, label_smoothing=smoothing)),
         f"The rows whose target is {ignore_index} (ignore_index) are counted: leave them out."),
        (smoothing > 0 and close(-(others_only * log_p).sum(1).mean()),
         f"That spreads the smoothing over the {k - 1} wrong classes only. Spread it over all "
         f"{k} classes, the right one included."),
        (n_kept > 1 and close(want * n_kept), "That is the sum over the rows; return their mean."),
        (smoothing > 0 and close(F.cross_entropy(logits, targets, ignore_index=ignore_index)),
         "That is the plain cross-entropy, without smoothing."),
    ]
    return next((explanation for matches, explanation in mistakes if matches), "")


register(Exercise(
    name="fast_training.smoothed_cross_entropy",
    title="Label smoothing with ignored targets",
    practises="label smoothing; cross-entropy against a target distribution; masking ignored targets",
    minutes=15,
    hint="the chapter's check of label smoothing (section \"Label smoothing\") computes the loss "
         "of every row. Decide first which rows count, with a boolean mask of the targets that are "
         "not ignore_index, and use only those rows (F.one_hot refuses a target of -100); the mean "
         "is over them alone.",
    judge=judge_cases(_fast_smoothing_cases, _fast_true_smoothing, _fast_smoothing_mistake,
                      then=_fast_smoothing_gradient),
    # nn.CrossEntropyLoss calls F.cross_entropy too, so it is refused as well; so is the course's
    # own cross-entropy, which takes label_smoothing.
    forbids=([(torch.nn.functional, "cross_entropy", "F.cross_entropy"),
              ("helpers.losses", "cross_entropy", "helpers.losses.cross_entropy")],
             "the exercise asks for the loss without calling F.cross_entropy"),
    # Not _fast_smoothing_mistake: it names the numbers of rows and classes of the case.
    hidden=HiddenCases(_fast_hidden_smoothing, _fast_true_smoothing, explain=_fast_large_logits_mistake,
                       rule="any logits, targets, smoothing and ignore_index"),
))


def _fast_crop_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(0)
    cases = []
    # One batch of non-square images: an answer that swaps H and W fails on it.
    for n, c, h, w, padding in ((4, 3, 8, 8, 2), (3, 1, 6, 6, 1), (5, 2, 7, 7, 3), (3, 2, 6, 9, 2)):
        images = torch.randn(n, c, h, w, generator=generator)
        top = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        left = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        cases.append(Case((images, padding, top, left),
                          f"{n} images of {c}x{h}x{w}, padding {padding}, top {top.tolist()}, "
                          f"left {left.tolist()}"))
    return cases


def _fast_true_crop(images, padding, top, left) -> torch.Tensor:
    from helpers.fast import crop_at

    return crop_at(images, padding, top, left)


def _fast_crop_mistake(got: Any, want: torch.Tensor, images, padding, top, left) -> str:
    """Name the usual mistake behind a wrong batch of crops, or return ''."""
    import torch.nn.functional as F

    if not isinstance(got, torch.Tensor):
        return ""
    if got.shape == want.permute(0, 2, 3, 1).shape != want.shape:
        return "The gather gives (N, H, W, C): permute it to (N, C, H, W)."
    if got.shape != want.shape:
        return ""
    if torch.equal(got.reshape(-1), want.permute(0, 2, 3, 1).reshape(-1).to(got.dtype)):
        return ("The numbers are right but in the wrong order: the gather gives (N, H, W, C), and "
                "reshape or view only relabel the memory in place; move the channels with "
                "permute(0, 3, 1, 2).")
    n, _, h, w = images.shape
    zero_padded = F.pad(images, (padding,) * 4)
    with_zeros = torch.stack([zero_padded[i, :, t:t + h, l:l + w]
                              for i, (t, l) in enumerate(zip(top.tolist(), left.tolist()))])
    got = got.double()  # an answer in another dtype is still compared, not a crash of the check
    if torch.allclose(got, with_zeros.double()):
        return ("The pixels from the padding are zeros: pad by mirroring the border, "
                "F.pad(images, (p, p, p, p), mode='reflect').")
    if torch.allclose(got, _fast_true_crop(images, padding, left, top).double()):
        return ("The crops are shifted the wrong way: top[i] moves the window down (rows, dimension 2), "
                "left[i] moves it right (columns, dimension 3).")
    return ""


def _fast_crop_in_one_go(answer: Callable) -> str | None:
    """A failure when the work the answer does grows with the number of images: a Python loop
    over them, which the exercise rules out. Counted twice: tensor operations (a loop of torch
    calls) and lines of the answer's own code (a loop in Python or NumPy)."""
    import sys

    from torch.overrides import TorchFunctionMode

    class Counting(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.operations = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.operations += 1
            return func(*args, **(kwargs or {}))

    lines = 0
    learners = {}  # file name -> whether it holds the learner's code, not a library's

    def count_lines(frame, event, arg):
        nonlocal lines
        name = frame.f_code.co_filename
        if name not in learners:
            learners[name] = not _in_course_or_library(name)
        if not learners[name]:
            return None  # no line events inside torch, NumPy or the course's helpers
        lines += event == "line"
        return count_lines

    generator = torch.Generator().manual_seed(1)
    work = {}
    for n in (2, 16):
        images = torch.randn(n, 3, 8, 8, generator=generator)
        top, left = torch.randint(0, 5, (2, n), generator=generator)
        lines, previous = 0, sys.gettrace()
        sys.settrace(count_lines)
        try:
            with Counting() as counting:
                call_answer(answer, f"{n} images of 3x8x8, padding 2", images, 2, top, left)
        finally:
            sys.settrace(previous)
        work[n] = (counting.operations, lines)
    if work[16][0] > work[2][0] or work[16][1] > work[2][1]:
        return (f"the answer runs {work[2][0]} tensor operations and {work[2][1]} lines of its own code "
                f"for 2 images, and {work[16][0]} and {work[16][1]} for 16: a Python loop over the "
                f"images. Build index tensors and gather every crop in one go")
    return None


register(Exercise(
    name="fast_training.crop_batch",
    title="A batch of crops in one operation",
    practises="advanced indexing; augmentation on whole batches on the device",
    minutes=20,
    hint="advanced indexing, on crop_at's formula out[i, c, y, x] = padded[i, c, top[i] + y, "
         "left[i] + x] (section \"Augmentation on the GPU\"): one index tensor for the image, one "
         "for the rows and one for the columns, shaped so that they broadcast to (N, H, W), and a "
         "slice for the channels. Then look at where the channels end up in the result.",
    judge=judge_cases(_fast_crop_cases, _fast_true_crop, _fast_crop_mistake, then=_fast_crop_in_one_go),
    forbids=([("helpers.fast", "crop_at", "helpers.fast.crop_at"),
              ("helpers.fast", "_crop", "helpers.fast._crop")],
             "the exercise asks for the gather written out, without helpers.fast.crop_at, which does it"),
))


# --- Chapter: Scaling out with DistributedDataParallel (book/distributed.ipynb) ---


def _distributed_shard_cases() -> list[Case]:
    return [
        Case((10, 2, 0, 0), "10 examples, 2 ranks, rank 0, epoch 0"),
        Case((10, 2, 1, 1), "10 examples, 2 ranks, rank 1, epoch 1"),
        Case((10, 3, 2, 0), "10 examples, 3 ranks, rank 2, epoch 0 (10 is not a multiple of 3)"),
        Case((7, 4, 3, 2), "7 examples, 4 ranks, rank 3, epoch 2"),
        Case((12, 4, 1, 5), "12 examples, 4 ranks, rank 1, epoch 5, seed 3", {"seed": 3}),
        Case((1, 3, 2, 0), "1 example, 3 ranks, rank 2, epoch 0 (fewer examples than ranks)"),
        Case((2, 7, 6, 1), "2 examples, 7 ranks, rank 6, epoch 1 (fewer examples than ranks)"),
        Case((10, 3, 2, 0), "10 examples, 3 ranks, rank 2, epoch 0, drop_last=True", {"drop_last": True}),
        Case((11, 4, 3, 1), "11 examples, 4 ranks, rank 3, epoch 1, drop_last=True", {"drop_last": True}),
        Case((12, 4, 1, 5), "12 examples, 4 ranks, rank 1, epoch 5, seed 3, drop_last=True",
             {"seed": 3, "drop_last": True}),
        Case((2, 5, 0, 0), "2 examples, 5 ranks, rank 0, epoch 0, drop_last=True (fewer examples than ranks)",
             {"drop_last": True}),
    ]


def _distributed_sampler_indices(num_examples: int, world_size: int, rank: int, epoch: int,
                                 seed: int = 0, drop_last: bool = False) -> list[int]:
    from torch.utils.data.distributed import DistributedSampler

    sampler = DistributedSampler(range(num_examples), num_replicas=world_size, rank=rank, shuffle=True,
                                 seed=seed, drop_last=drop_last)
    sampler.set_epoch(epoch)
    return list(sampler)


def _distributed_hidden_shards(generator: torch.Generator) -> list[Case]:
    """Up to 60 examples on up to 8 ranks, so that the order is often padded or cut and sometimes
    shorter than the number of ranks; any rank, epoch and seed, with and without drop_last."""
    cases = []
    for _ in range(100):
        n, world = _draw_int(generator, 1, 60), _draw_int(generator, 1, 8)
        rank, epoch = _draw_int(generator, 0, world - 1), _draw_int(generator, 0, 9)
        settings = {"seed": _draw_int(generator, 0, 5), "drop_last": bool(_draw_int(generator, 0, 1))}
        cases.append(Case((n, world, rank, epoch), f"{n} examples, {world} ranks, rank {rank}, epoch {epoch}, "
                          f"{settings}", settings))
    return cases


def _distributed_shard_mistake(got: list[int], n: int, world: int, rank: int, epoch: int, seed: int = 0,
                               drop_last: bool = False) -> str:
    """Which usual mistake gives the wrong indices ``got``: "epoch", "seed", "drop_last", "length", "block",
    or ""."""
    def sampler(**changed) -> list[int]:  # the reference, with some settings changed
        settings = {"rank": rank, "epoch": epoch, "seed": seed, "drop_last": drop_last} | changed
        return _distributed_sampler_indices(n, world, **settings)

    want = sampler()
    if epoch > 0 and got == sampler(epoch=0):
        return "epoch"
    if seed != 0 and got == sampler(seed=0):
        return "seed"
    if drop_last and got == sampler(drop_last=False):
        return "drop_last"
    if len(got) != len(want):
        return "length"
    # The padded (or cut) order that the ranks take their strides of, rebuilt from theirs.
    shares = [sampler(rank=r) for r in range(world)]
    order = [share[k] for k in range(len(want)) for share in shares]
    return "block" if got == order[rank * len(want):(rank + 1) * len(want)] else ""


# The mistakes of _distributed_shard_mistake, in words that name no input: said after the numbers of
# the case that failed, shown or hidden.
_DISTRIBUTED_SHARD_MISTAKES = {
    "epoch": "That is the order of epoch 0: the order must change every epoch (the generator's seed depends "
             "on the epoch, which is what sampler.set_epoch sets)",
    "seed": "That is the order for seed 0: the generator is seeded with seed + epoch, so the seed "
            "changes the order too",
    "drop_last": "Those are the indices for drop_last=False: with drop_last=True the order is not padded but "
                 "cut, so that it divides evenly among the ranks",
    "length": "The number of indices is wrong: every rank gets as many, from the order padded (or, with "
              "drop_last=True, cut) to a multiple of world_size; a padding longer than the order repeats "
              "the order from its start as many times as needed",
    "block": "That is a contiguous block of the shuffled order; each rank takes every world_size-th position "
             "of it, from the position equal to its rank",
}


def _distributed_judge_shards(answer: Callable) -> str | None:
    for case in _distributed_shard_cases():
        n, world, rank, _ = case.args
        want = _distributed_sampler_indices(*case.args, **case.kwargs)
        state = torch.random.get_rng_state()
        got = call_answer(answer, case.label, *case.args, **case.kwargs)
        if not torch.equal(torch.random.get_rng_state(), state):
            torch.random.set_rng_state(state)  # the learner's notebook gets its own back
            return (f"on {case.label}, the answer changed PyTorch's global random state (torch.manual_seed, "
                    f"or a draw such as torch.randperm without generator=): the dropout and shuffling "
                    f"of the training that follows would change with it, and a run could no longer be "
                    f"repeated. Draw the order from a generator of its own, seeded with seed + epoch, "
                    f"as DistributedSampler does")
        if not isinstance(got, list) or not all(_is_int(i) for i in got):
            return f"on {case.label}, expected a list of ints, got {_describe(got)}"
        got = [int(i) for i in got]  # a NumPy or 0-d tensor integer is an int too
        if got == want:
            continue
        mistake = _distributed_shard_mistake(got, *case.args, **case.kwargs)
        if mistake in ("epoch", "seed", "drop_last"):
            return f"on {case.label}, expected {want}, got {got}. {_DISTRIBUTED_SHARD_MISTAKES[mistake]}"
        if mistake == "length":
            padding = len(want) * world - n
            why = (f": the padding ({padding} indices) is longer than the order ({n}), so the order is "
                   f"repeated from its start as many times as needed" if padding > n else "")
            count = f"{len(want)} index" if len(want) == 1 else f"{len(want)} indices"
            return f"on {case.label}, expected {count}, got {len(got)}{why}"
        if mistake == "block":
            return (f"on {case.label}, got a contiguous block of the shuffled order; rank {rank} takes "
                    f"the positions {rank}, {rank + world}, {rank + 2 * world}, ... of it")
        return f"on {case.label}, expected {want}, got {got}"
    return None


def _distributed_shard_explain(got: Any, want: list[int], *args, **kwargs) -> str:
    if not isinstance(got, list) or not all(_is_int(i) for i in got):
        return "Return a list of ints"
    return _DISTRIBUTED_SHARD_MISTAKES.get(_distributed_shard_mistake([int(i) for i in got], *args, **kwargs), "")


register(Exercise(
    name="distributed.shard_indices",
    title="Which examples does each rank see?",
    practises="DistributedSampler: one shuffled order per epoch, padded or cut, taken with a stride",
    minutes=20,
    hint="the section \"Each rank its own examples: DistributedSampler\" builds the order for "
         "drop_last=False, and the paragraph on drop_last after it says what drop_last=True changes. "
         "Try your function with fewer examples than ranks, and compare with DistributedSampler.",
    judge=_distributed_judge_shards,
    forbids=([("torch.utils.data.distributed", "DistributedSampler", "DistributedSampler")],
             "the exercise asks for the indices worked out by hand, without DistributedSampler"),
    hidden=HiddenCases(_distributed_hidden_shards, _distributed_sampler_indices, explain=_distributed_shard_explain,
                       rule="any number of examples and of ranks, any rank, epoch and seed, with and without "
                            "drop_last"),
))


def _distributed_judge_accumulation(answer: Callable) -> str | None:
    import copy

    generator = torch.Generator().manual_seed(0)  # the learner's global random state is left alone
    model = torch.nn.Sequential(torch.nn.utils.skip_init(torch.nn.Linear, 4, 8), torch.nn.Tanh(),
                                torch.nn.utils.skip_init(torch.nn.Linear, 8, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator))
    inputs, targets = torch.randn(12, 4, generator=generator), torch.randint(0, 3, (12,), generator=generator)
    reference = copy.deepcopy(model)

    def gradients(loss_fn, size: int = 12) -> list[torch.Tensor]:  # of the last `size` examples' mean loss
        loss = loss_fn(reference(inputs[-size:]), targets[-size:])
        return list(torch.autograd.grad(loss, list(reference.parameters())))

    # The second round's loss is not plain cross-entropy: an answer must use the loss_fn it is given.
    for micro_batches, loss_fn, which in ((3, torch.nn.CrossEntropyLoss(), ""),
                                          (4, torch.nn.CrossEntropyLoss(label_smoothing=0.1),
                                           ", with loss_fn = CrossEntropyLoss(label_smoothing=0.1)")):
        label = f"12 examples in {micro_batches} micro-batches of {12 // micro_batches}{which}"
        want = gradients(loss_fn)
        for p in model.parameters():  # stale gradients from an earlier step
            p.grad = torch.ones_like(p)
        seen = []  # the batch size of every forward pass the answer trains through

        def record(module, args, kwargs):  # a pass under no_grad (a loss to print, say) trains nothing
            if torch.is_grad_enabled():
                seen.append(len(args[0] if args else next(iter(kwargs.values()))))
        # On the first layer, so that model(x), model.forward(x) and keyword calls are all seen.
        recording = model[0].register_forward_pre_hook(record, with_kwargs=True)
        # A hook on a leaf fires once per backward() (or autograd.grad) that reaches it: it records
        # how many forward passes had run by then. Accumulation runs backward on each micro-batch
        # before the next forward pass, [1, 2, 3]; one backward() over the summed losses, [3],
        # gives the same gradients but keeps every micro-batch's graph alive until the end.
        backwards = []
        counting = model[0].weight.register_hook(lambda grad: backwards.append(len(seen)))
        try:
            got = call_answer(answer, label, model, loss_fn, inputs.clone(), targets.clone(), micro_batches)
        finally:
            recording.remove()
            counting.remove()
        if seen != [12 // micro_batches] * micro_batches:
            return (f"on {label}, the model ran forward passes on batches of {seen or 'nothing'}: run "
                    f"forward and backward on each of the {micro_batches} micro-batches of "
                    f"{12 // micro_batches} in turn, which is the point of accumulation")
        # No backward at all is left to the gradients' check (torch.func computes them otherwise).
        if backwards and backwards != list(range(1, micro_batches + 1)):
            times = "once" if len(backwards) == 1 else f"{len(backwards)} times"
            last = "only after the last one" if len(backwards) == 1 else "all after the last one"
            when = (last if set(backwards) == {micro_batches}
                    else f"after forward passes {backwards} (counted from 1)")
            return (f"on {label}, the model ran {micro_batches} forward passes, but backward() ran "
                    f"{times}, {when}: call backward() on each micro-batch's loss before the "
                    f"next forward pass. Keeping every micro-batch's graph until the end holds "
                    f"the whole batch's activations, which accumulation exists to avoid")
        if not isinstance(got, (list, tuple)) or len(got) != len(want):
            return (f"on {label}, expected a list of {len(want)} gradients (one per parameter, in the order "
                    f"of model.parameters()), got {_describe(got)}")

        def gives(expected: list[torch.Tensor], atol: float = 1e-6) -> bool:
            try:  # compare() works in float64, whatever the answer's dtype
                compare(list(got), expected, atol, 1e-5)
                return True
            except _Mismatch:
                return False

        if gives(want):
            kept = [g.detach().clone() for g in got]
            for p in model.parameters():  # what the next zero_grad(set_to_none=False) does
                if p.grad is not None:
                    p.grad.zero_()
            if not all(torch.equal(g, k) for g, k in zip(got, kept)):
                return (f"on {label}, the gradients returned are the model's own .grad tensors, not "
                        f"copies: the next zero_grad() or backward() changes them in place, and the "
                        f"list returned with them. Return copies (p.grad.clone())")
            continue
        if which and gives(gradients(torch.nn.CrossEntropyLoss()), atol=1e-5):
            return (f"on {label}, those are the gradients of the plain cross-entropy, not of the loss_fn "
                    f"given: compute each micro-batch's loss with loss_fn")
        if gives([micro_batches * w for w in want], atol=1e-5):
            return (f"on {label}, the gradients are {micro_batches} times too large: each micro-batch's "
                    f"loss is already a mean, so divide it by the number of micro-batches before "
                    f"backward()")
        if gives([w + 1 for w in want], atol=1e-5):
            return (f"on {label}, the gradients include the ones left from an earlier step: backward() "
                    f"adds to .grad, so zero it first (model.zero_grad())")
        last = [g / micro_batches for g in gradients(loss_fn, 12 // micro_batches)]
        if gives(last, atol=1e-5):
            return (f"on {label}, only the last micro-batch's gradient is left: the gradients were "
                    f"zeroed inside the loop. Zero them once, before it")
        try:
            compare(list(got), list(want), 1e-6, 1e-5)
        except _Mismatch as mismatch:
            return f"on {label}, {mismatch}"
    return None


register(Exercise(
    name="distributed.accumulated_gradients",
    title="A large batch from small ones: gradient accumulation",
    practises="gradient accumulation and the effective batch size",
    minutes=15,
    hint="the section \"The effective batch size, and the learning rate\" explains accumulation. "
         "Remember that backward() adds to .grad, and that each micro-batch's loss is a mean over "
         "its own examples only; Tensor.chunk splits a batch.",
    judge=_distributed_judge_accumulation,
))


# --- Chapter: Evaluating a classifier (book/evaluation.ipynb) ---


def _evaluation_confusions() -> list[Case]:
    gen = torch.Generator().manual_seed(0)
    large = torch.randint(0, 40, (10, 10), generator=gen) + 60 * torch.eye(10, dtype=torch.int64)
    return [
        Case((torch.tensor([[2, 1, 1], [1, 1, 0], [0, 1, 3]]),), "the chapter's 3x3 example"),
        Case((torch.tensor([[5, 0, 1], [2, 3, 0], [0, 0, 0]]),),
             "a 3x3 matrix whose class 2 has no examples (its row is all zeros)"),
        Case((torch.tensor([[1, 0, 0], [0, 1, 0], [0, 2, 0]]),), "a 3x3 matrix whose class 2 is never predicted"),
        Case((large,), "a 10x10 matrix of counts"),
    ]


def _evaluation_recall_mistake(got: Any, want: Any, confusion: torch.Tensor) -> str:
    """Name the usual mistake behind a wrong per-class recall, or return ''."""
    from helpers.metrics import precision

    c = confusion.double()
    rows = c.sum(dim=1)
    if (isinstance(got, torch.Tensor) and got.shape == rows.shape and torch.isnan(got.double()).any()
            and (rows == 0).any()):
        k = int(torch.nonzero(rows == 0)[0])
        return (f"Class {k} has no examples (row {k} sums to 0), so its recall is 0 by the convention of "
                f"this book (scikit-learn's zero_division=0), not NaN: divide only where the row sum is positive")
    candidates = [
        (precision(confusion), "That is the precision: it divides the diagonal by the column sums (how often "
                               "each class was predicted). Recall divides by the row sums (how many examples "
                               "each class has): confusion.sum(dim=1)."),
        ((c.diagonal() // rows.clamp_min(1)).float(),
         "The answer looks like integer division, which rounds every recall below 1 down to 0: convert "
         "the counts to float first (confusion.float())."),
    ]
    for wrong, explanation in candidates:
        if isinstance(got, torch.Tensor) and got.shape == wrong.shape and torch.allclose(
                got.double().nan_to_num(-1.0), wrong.double(), atol=1e-6):
            return explanation
    return ""


def _evaluation_true_recall(confusion: torch.Tensor) -> torch.Tensor:
    from helpers.metrics import recall

    return recall(confusion)


register(Exercise(
    name="evaluation.per_class_recall",
    title="Per-class recall from a confusion matrix",
    practises="reading a confusion matrix: rows are true classes; ratios with a zero denominator",
    minutes=10,
    hint="the section \"Precision, recall and F1, per class\" defines recall from the matrix: is it a row "
         "or a column that counts the examples of a class? \"A class that is never predicted\" says what a "
         "class without examples gets; torch.where can choose between two results element by element.",
    judge=judge_cases(_evaluation_confusions, _evaluation_true_recall, _evaluation_recall_mistake),
    # precision(confusion.T) is the recall too.
    forbids=([("helpers.metrics", "recall", "helpers.metrics.recall"),
              ("helpers.metrics", "precision", "helpers.metrics.precision")],
             "the exercise asks for the recall computed from the matrix, without helpers.metrics"),
))


def _evaluation_label_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(1)
    y_true = torch.randint(0, 10, (200,), generator=gen)
    noise = torch.randint(0, 10, (200,), generator=gen)
    y_pred = torch.where(torch.rand(200, generator=gen) < 0.6, y_true, noise)
    skewed_true = torch.tensor([0] * 12 + [1] * 3 + [2] * 5)
    skewed_pred = torch.tensor([0] * 10 + [1] * 2 + [1] * 3 + [0, 0, 2, 2, 2])
    return [
        Case(([0, 0, 0, 0, 1, 1, 2, 2, 2, 2], [0, 0, 1, 2, 1, 0, 2, 2, 1, 2], 3), "the chapter's 10 examples of 3 classes"),
        Case((skewed_true, skewed_pred, 3), "20 examples of 3 classes of sizes 12, 3 and 5"),
        Case(([0, 1, 2, 2], [0, 1, 1, 1], 3), "4 examples whose class 2 is never predicted"),
        Case(([0, 0, 1, 1, 1], [0, 1, 1, 1, 0], 4), "5 examples of 4 classes, classes 2 and 3 absent"),
        Case((y_true, y_pred, 10), "200 examples of 10 classes, 60% right"),
    ]


def _evaluation_hidden_labels(generator: torch.Generator) -> list[Case]:
    """Labels of 2 to 8 classes, some of which may be absent or never predicted, as lists or as
    tensors."""
    cases = []
    for i in range(40):
        num_classes, n = _draw_int(generator, 2, 8), _draw_int(generator, 1, 60)
        y_true = torch.randint(0, num_classes, (n,), generator=generator)
        guesses = torch.randint(0, num_classes, (n,), generator=generator)
        y_pred = torch.where(torch.rand(n, generator=generator) < 0.5, y_true, guesses)
        if i % 2:
            y_true, y_pred = y_true.tolist(), y_pred.tolist()
        cases.append(Case((y_true, y_pred, num_classes), f"{n} examples of {num_classes} classes"))
    return cases


def _evaluation_true_macro_f1(y_true, y_pred, num_classes: int) -> float:
    from helpers.metrics import confusion_matrix, f1_score, macro_average

    return macro_average(f1_score(confusion_matrix(y_true, y_pred, num_classes)))


def _evaluation_macro_f1_mistake(got: Any, want: float, y_true, y_pred, num_classes: int) -> str:
    from helpers.metrics import confusion_matrix, f1_score, macro_average, precision, recall

    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        return ""
    confusion = confusion_matrix(y_true, y_pred, num_classes)
    f1 = f1_score(confusion).double()
    support = confusion.sum(dim=1).double()
    p, r = macro_average(precision(confusion)), macro_average(recall(confusion))
    defined = (confusion.sum(dim=0) > 0) & (confusion.sum(dim=1) > 0)
    candidates = [
        (confusion.trace().item() / confusion.sum().item(),
         "That is the accuracy, which equals the micro-averaged F1 (the counts of all classes pooled). "
         "Macro-F1 is the mean of the num_classes per-class F1 scores, each class counting the same"),
        ((f1 * support).sum().item() / support.sum().item(),
         "That is the F1 scores weighted by each class's number of examples (scikit-learn's "
         "average='weighted'). The macro average gives every class the same weight"),
        (f1[defined].mean().item() if defined.any() else math.nan,
         "Classes that are never predicted, or have no examples, were left out of the mean. Their F1 is 0 "
         "(zero_division=0) and they stay in the mean over all num_classes classes"),
    ]
    # Answers built from precision and recall. When the macro precision equals the macro recall
    # (as in the chapter's example), all four give the same number: then none of them is named.
    from_precision_and_recall = [
        (r, "That is the macro recall (the mean of the per-class recalls). Macro-F1 is the mean "
            "of the per-class F1 scores, each combining that class's precision and recall"),
        (p, "That is the macro precision (the mean of the per-class precisions). Macro-F1 is the "
            "mean of the per-class F1 scores, each combining that class's precision and recall"),
        ((p + r) / 2,
         "That is the plain mean of precision and recall. F1 is their harmonic mean, class by "
         "class, and macro-F1 is the plain mean of those per-class F1 scores"),
        (2 * p * r / (p + r) if p + r > 0 else 0.0,
         "That is the harmonic mean of the macro precision and the macro recall. Macro-F1 first "
         "computes each class's F1, then takes their plain mean"),
    ]

    def matching(pairs):
        return [explanation for wrong, explanation in pairs
                if not math.isnan(wrong) and math.isclose(got, wrong, rel_tol=1e-5, abs_tol=1e-7)]

    found = matching(candidates[:2])  # accuracy and the weighted mean come first, as before
    if found:
        return found[0]
    found = matching(from_precision_and_recall)
    if len(found) == 1:
        return found[0]
    if found:
        return ("Here the macro precision equals the macro recall, so that number is what each "
                "of them gives, and so do their plain mean and the harmonic mean of the macro "
                "precision and the macro recall. Macro-F1 is the plain mean of the per-class F1 "
                "scores, each the harmonic mean of that class's own precision and recall")
    found = matching(candidates[2:])
    return found[0] if found else ""


register(Exercise(
    name="evaluation.macro_f1",
    title="Macro-F1 from labels",
    practises="per-class F1 and the macro average; why it differs from accuracy on unbalanced classes",
    minutes=15,
    hint="the sections \"Precision, recall and F1, per class\" and \"Macro averages, and why "
         "micro-F1 is the accuracy\" give each step: the counts of every class, the form of F1 that "
         "needs no special case, and which classes the mean runs over (a confusion matrix gives all "
         "the counts at once).",
    judge=judge_cases(_evaluation_label_cases, _evaluation_true_macro_f1, _evaluation_macro_f1_mistake),
    hidden=HiddenCases(_evaluation_hidden_labels, _evaluation_true_macro_f1, explain=_evaluation_macro_f1_mistake,
                       rule="any labels and number of classes"),
))


def _evaluation_curves() -> list[Case]:
    return [
        Case(([1.0, 0.8, 0.85, 0.9, 0.7], 2), "losses [1.0, 0.8, 0.85, 0.9, 0.7] with patience 2"),
        Case(([1.0, 0.8, 0.85, 0.9, 0.7], 3), "losses [1.0, 0.8, 0.85, 0.9, 0.7] with patience 3"),
        Case(([2.0, 1.5, 1.2, 1.1, 1.05], 2), "a loss that falls at every epoch, patience 2"),
        Case(([1.2, 1.0, 1.0, 1.0, 1.1], 3), "losses [1.2, 1.0, 1.0, 1.0, 1.1] with patience 3 (ties)"),
        Case(([0.9, 1.0, 1.1, 1.2], 1), "a loss that only rises, patience 1"),
        Case(([1.5, 1.3, 1.2, 1.25, 1.22, 1.21, 1.3, 1.1], 3), "eight epochs with patience 3"),
    ]


def _evaluation_stopping(val_losses, patience: int, ties_improve: bool = False,
                         never_reset: bool = False, min_delta: float = 0.0) -> tuple[int, int]:
    """(the epoch whose weights early stopping keeps, the epoch after which it stops), 1-based.

    ``ties_improve=True`` is the usual mistake of counting a loss equal to the best as a new best;
    ``never_reset=True`` that of a count of epochs without improvement not reset by an improvement;
    ``min_delta > 0`` that of asking an improvement to be larger than that.
    """
    best, best_epoch, waited = math.inf, 0, 0
    for epoch, loss in enumerate(val_losses, start=1):
        if loss < best - min_delta or (ties_improve and loss == best):
            best, best_epoch, waited = loss, epoch, waited if never_reset else 0
        else:
            waited += 1
            if waited == patience:
                return best_epoch, epoch
    return best_epoch, len(val_losses)


def _evaluation_kept_epoch(val_losses, patience: int) -> int:
    return _evaluation_stopping(val_losses, patience)[0]


def _evaluation_hidden_curves(generator: torch.Generator) -> list[Case]:
    """Validation curves that fall, wander and rise, with ties (the losses have two decimals), of
    3 to 30 epochs, and patience from 1 to 5."""
    cases = []
    for _ in range(100):
        epochs, patience = _draw_int(generator, 3, 30), _draw_int(generator, 1, 5)
        steps = 0.05 * torch.randn(epochs, generator=generator, dtype=torch.float64) - 0.01
        losses = [round(loss, 2) for loss in (1.0 + steps.cumsum(0)).clamp_min(0.01).tolist()]
        cases.append(Case((losses, patience), f"losses {losses} with patience {patience}"))
    # An improvement much smaller than the two decimals' 0.01 is an improvement all the same.
    tiny = [1.0, 0.9, 0.95, 0.89995, 0.97, 0.98]
    cases.append(Case((tiny, 3), f"losses {tiny} with patience 3"))
    return cases


def _evaluation_stopping_mistake(got: Any, want: int, val_losses, patience: int) -> str:
    """Name the usual mistake behind a wrong epoch, or return ''; it names no input."""
    if not _is_int(got):  # compare() has said so when the value is right
        return "" if _equals(got, want) else "Return the epoch number as an int"
    got = int(got)
    _, stop = _evaluation_stopping(val_losses, patience)
    global_best = min(range(len(val_losses)), key=lambda i: val_losses[i]) + 1
    ties_best, _ = _evaluation_stopping(val_losses, patience, ties_improve=True)
    if got == want - 1:
        return "Epochs are numbered from 1, as in fit's history: add 1 to the index of the best loss"
    if got == _evaluation_stopping(val_losses, patience, min_delta=1e-3)[0]:
        return ("That takes a loss only a little below the best for no improvement, as a min_delta or a "
                "relative threshold does: any loss strictly lower than the best so far is an "
                "improvement, however small the difference")
    if got == stop:
        return ("That is the epoch at which training stops (after patience epochs without improvement); "
                "early stopping keeps the weights of the best epoch before it")
    # Stopping one epoch late or early (waited > patience, or counting from 0 to patience - 1) keeps
    # the best epoch of a longer or shorter run. One epoch late may keep the global best too (as on
    # the first case shown): then the message fits both mistakes.
    if got == _evaluation_stopping(val_losses, patience + 1)[0]:
        if got == global_best:
            return ("That epoch has the lowest validation loss of the whole curve, and it is also "
                    "the one kept by stopping one epoch late: either way the run went on past its "
                    "stop. Stop as soon as patience epochs in a row have not improved on the best: "
                    "later epochs are never seen")
        return ("That is the epoch kept by stopping one epoch late, after patience + 1 epochs "
                "without improvement: stop as soon as the count of epochs without improvement "
                "reaches patience")
    if patience > 1 and got == _evaluation_stopping(val_losses, patience - 1)[0]:
        return ("That is the epoch kept by stopping one epoch early, after patience - 1 epochs "
                "without improvement: stop when the count of epochs without improvement reaches "
                "patience")
    if got == _evaluation_stopping(val_losses, patience, never_reset=True)[0]:
        return ("The count of epochs without improvement must start again from 0 at every "
                "improvement: it counts the epochs since the best loss so far, not all the epochs "
                "that did not improve")
    if got == global_best:
        return ("That epoch has the lowest validation loss of the whole curve, but training stopped before "
                "it, once patience epochs in a row had not improved on the best: later epochs are never seen")
    if got == ties_best:
        return ("A loss equal to the best so far is not an improvement: keep the first epoch that reached it, "
                "and count the tie as an epoch without improvement")
    return ""


register(Exercise(
    name="evaluation.early_stopping_epoch",
    title="The epoch early stopping keeps",
    practises="early stopping with patience on a validation curve",
    minutes=10,
    hint="the section \"Early stopping\" describes the rule, and its EarlyStopping class applies it one "
         "epoch at a time: follow the same steps over the list, and mind what counts as an improvement "
         "and how epochs are numbered.",
    judge=judge_cases(_evaluation_curves, _evaluation_kept_epoch, _evaluation_stopping_mistake),
    hidden=HiddenCases(_evaluation_hidden_curves, _evaluation_kept_epoch, explain=_evaluation_stopping_mistake,
                       rule="any curve and patience"),
))

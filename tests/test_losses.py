"""helpers.losses equals torch.nn.functional (values and gradients), and refuses what PyTorch does.

PyTorch is the oracle: Hypothesis draws shapes, dtypes, values (extreme logits included), class
weights, label smoothing and reductions; each loss and its gradient through autograd must agree
with ``torch.nn.functional`` within ``torch.testing.assert_close``'s tolerances for the dtype.
"""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from helpers import losses
from helpers.exercises import FAILED, NOT_DONE, PASSED, judge_answer

# Few examples each: the suite runs on two shared CPU cores. The same examples every run, and no
# example database on disk, so that whether a bug is caught does not depend on luck.
PROPERTY = settings(max_examples=40, deadline=None, database=None, derandomize=True)
REDUCTIONS = st.sampled_from(losses.REDUCTIONS)
DTYPES = st.sampled_from([np.float32, np.float64])
SHAPES = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5)


def arrays(dtype, shape, low, high):
    """A tensor of ``shape`` with values in [low, high] that ``dtype`` can hold exactly."""
    width = 32 if dtype == np.float32 else 64
    low, high = (float(dtype(bound)) for bound in (low, high))  # the nearest numbers dtype holds
    return hnp.arrays(dtype, shape, elements=st.floats(low, high, width=width)).map(torch.from_numpy)


def extreme_logits(dtype, shape):
    """Logits of magnitude 100 to 10^6, either sign: where the naive formulas give inf or NaN."""
    width = 32 if dtype == np.float32 else 64
    magnitude = st.floats(100, 1e6, width=width)
    return hnp.arrays(dtype, shape, elements=st.one_of(magnitude, magnitude.map(lambda v: -v))
                      ).map(torch.from_numpy)


def assert_same_value_and_gradient(ours, theirs, x, *args, **kwargs):
    """``ours`` and ``theirs`` agree on ``x`` and on the gradient with respect to ``x``."""
    x_ours = x.clone().requires_grad_(True)
    x_theirs = x.clone().requires_grad_(True)
    got, want = ours(x_ours, *args, **kwargs), theirs(x_theirs, *args, **kwargs)
    torch.testing.assert_close(got, want)
    # An upstream gradient that differs per element, so that 'none' is tested element by element.
    upstream = torch.linspace(-1.0, 2.0, max(want.numel(), 1), dtype=want.dtype)[: want.numel()].reshape(want.shape)
    got.backward(upstream)
    want.backward(upstream)
    torch.testing.assert_close(x_ours.grad, x_theirs.grad)
    return got, x_ours.grad


# --- Mean squared error -----------------------------------------------------------------------


@PROPERTY
@given(data=st.data(), shape=SHAPES, dtype=DTYPES, reduction=REDUCTIONS)
def test_mse_equals_pytorch(data, shape, dtype, reduction):
    prediction = data.draw(arrays(dtype, shape, -1e3, 1e3))
    target = data.draw(arrays(dtype, shape, -1e3, 1e3))
    _, grad = assert_same_value_and_gradient(losses.mean_squared_error, F.mse_loss, prediction, target,
                                             reduction=reduction)
    if reduction == "mean":  # d/dp of (1/N) sum (p - y)^2, times the upstream -1
        torch.testing.assert_close(grad, -2 * (prediction - target) / prediction.numel())


# --- Binary cross-entropy on probabilities ----------------------------------------------------


@PROPERTY
@given(data=st.data(), shape=SHAPES, dtype=DTYPES, reduction=REDUCTIONS)
def test_bce_equals_pytorch_on_all_probabilities_including_0_and_1(data, shape, dtype, reduction):
    probabilities = data.draw(arrays(dtype, shape, 0.0, 1.0))
    targets = data.draw(arrays(dtype, shape, 0.0, 1.0))
    torch.testing.assert_close(losses.binary_cross_entropy(probabilities, targets, reduction),
                               F.binary_cross_entropy(probabilities, targets, reduction=reduction))


@PROPERTY
@given(data=st.data(), shape=SHAPES, dtype=DTYPES, reduction=REDUCTIONS)
def test_bce_gradient_equals_pytorch_on_all_probabilities_including_0_and_1(data, shape, dtype, reduction):
    probabilities = data.draw(arrays(dtype, shape, 0.0, 1.0))
    targets = data.draw(arrays(dtype, shape, 0.0, 1.0))
    assert_same_value_and_gradient(losses.binary_cross_entropy, F.binary_cross_entropy,
                                   probabilities, targets, reduction=reduction)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bce_gradient_at_p_0_and_1_is_pytorchs_not_nan(dtype):
    # (p - y) / (p (1 - p)) is 0/0 or 1/0 there. PyTorch divides by max(p (1 - p), 1e-12): a
    # right prediction (p = y) gets 0, a wrong one (p = 1 - y) a large finite push, +-1e12.
    p = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=dtype)
    y = torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=dtype)
    ours, theirs = p.clone().requires_grad_(True), p.clone().requires_grad_(True)
    losses.binary_cross_entropy(ours, y, "sum").backward()
    F.binary_cross_entropy(theirs, y, reduction="sum").backward()
    assert torch.isfinite(ours.grad).all(), ours.grad
    torch.testing.assert_close(ours.grad, theirs.grad)
    torch.testing.assert_close(ours.grad, torch.tensor([0.0, -1e12, 1e12, 0.0], dtype=dtype))


def test_bce_gradient_with_respect_to_the_targets_is_pytorchs():
    p = torch.tensor([0.0, 1.0, 0.3, 0.9], dtype=torch.float64)
    y = torch.tensor([0.5, 0.5, 0.2, 1.0], dtype=torch.float64)
    ours, theirs = y.clone().requires_grad_(True), y.clone().requires_grad_(True)
    losses.binary_cross_entropy(p, ours).backward()
    F.binary_cross_entropy(p, theirs).backward()
    torch.testing.assert_close(ours.grad, theirs.grad)  # -logit(p) / N, infinite at 0 and 1


def test_bce_is_the_articles_formula():
    p, y = torch.tensor([0.9, 0.2, 0.6]), torch.tensor([1.0, 0.0, 1.0])
    by_hand = -(y * p.log() + (1 - y) * (1 - p).log()).sum() / 3
    torch.testing.assert_close(losses.binary_cross_entropy(p, y), by_hand)


def test_bce_clamps_each_log_at_minus_100_like_pytorch():
    p, y = torch.tensor([0.0, 1.0, 0.0]), torch.tensor([1.0, 0.0, 0.0])
    torch.testing.assert_close(losses.binary_cross_entropy(p, y, "none"), torch.tensor([100.0, 100.0, 0.0]))


# --- Binary cross-entropy on logits -----------------------------------------------------------


@PROPERTY
@given(data=st.data(), shape=SHAPES, dtype=DTYPES, reduction=REDUCTIONS, hard=st.booleans())
def test_bce_with_logits_equals_pytorch(data, shape, dtype, reduction, hard):
    logits = data.draw(arrays(dtype, shape, -1e4, 1e4))
    targets = data.draw(arrays(dtype, shape, 0.0, 1.0))
    targets = targets.round() if hard else targets
    assert_same_value_and_gradient(losses.binary_cross_entropy_with_logits,
                                   F.binary_cross_entropy_with_logits, logits, targets, reduction=reduction)


@PROPERTY
@given(data=st.data(), shape=SHAPES, dtype=DTYPES, reduction=REDUCTIONS)
def test_bce_with_logits_stays_finite_and_exact_for_extreme_logits(data, shape, dtype, reduction):
    logits = data.draw(extreme_logits(dtype, shape))
    targets = data.draw(arrays(dtype, shape, 0.0, 1.0)).round()
    value, grad = assert_same_value_and_gradient(
        losses.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits, logits, targets,
        reduction=reduction)
    assert torch.isfinite(value).all() and torch.isfinite(grad).all()
    # A confidently wrong logit costs |z|, a confidently right one nothing.
    wrong = (logits > 0) != (targets > 0.5)
    per_element = losses.binary_cross_entropy_with_logits(logits, targets, "none")
    torch.testing.assert_close(per_element, torch.where(wrong, logits.abs(), torch.zeros_like(logits)))
    if reduction == "mean":  # d/dz of BCE(sigmoid(z), y) is (sigmoid(z) - y) / N; upstream is -1
        torch.testing.assert_close(grad, -(torch.sigmoid(logits) - targets) / logits.numel())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bce_with_logits_gradient_is_right_at_zero(dtype):
    # max(z, 0) - z y + log(1 + exp(-|z|)) has the right values but autograd's choice of
    # subgradient for max and |z| at 0 gives the wrong gradient there; the log-sum-exp form does not.
    z = torch.zeros(2, dtype=dtype, requires_grad=True)
    losses.binary_cross_entropy_with_logits(z, torch.tensor([1.0, 0.0], dtype=dtype), "sum").backward()
    torch.testing.assert_close(z.grad, torch.tensor([-0.5, 0.5], dtype=dtype))


# --- Log-softmax and cross-entropy ------------------------------------------------------------


@st.composite
def classification(draw, extreme=False, probabilities=False):
    """(logits, targets, weight, label_smoothing) for shapes (C,), (N, C) or (N, C, d)."""
    dtype = draw(DTYPES)
    n_classes = draw(st.integers(1, 6))
    batch = draw(st.sampled_from([(), (draw(st.integers(1, 5)),),
                                  (draw(st.integers(1, 4)), draw(st.integers(1, 3)))]))
    shape = (n_classes,) if batch == () else (batch[0], n_classes, *batch[1:])
    logits = draw(extreme_logits(dtype, shape) if extreme else arrays(dtype, shape, -1e3, 1e3))
    if probabilities:
        targets = draw(arrays(dtype, shape, 0.0, 1.0))
    else:
        targets = torch.from_numpy(draw(hnp.arrays(np.int64, batch, elements=st.integers(0, n_classes - 1))))
    weight = draw(st.one_of(st.none(), arrays(dtype, (n_classes,), 0.1, 10.0)))
    label_smoothing = draw(st.one_of(st.just(0.0), st.floats(0.0, 1.0)))
    return logits, targets, weight, label_smoothing


@PROPERTY
@given(data=st.data(), shape=SHAPES, dtype=DTYPES)
def test_log_softmax_equals_pytorch(data, shape, dtype):
    logits = data.draw(st.one_of(arrays(dtype, shape, -1e4, 1e4), extreme_logits(dtype, shape)))
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    got, _ = assert_same_value_and_gradient(losses.log_softmax, torch.log_softmax, logits, dim)
    assert torch.isfinite(got).all()


@PROPERTY
@given(case=classification(), reduction=REDUCTIONS)
def test_cross_entropy_equals_pytorch(case, reduction):
    logits, targets, weight, label_smoothing = case
    assert_same_value_and_gradient(losses.cross_entropy, F.cross_entropy, logits, targets, weight,
                                   label_smoothing=label_smoothing, reduction=reduction)


@PROPERTY
@given(case=classification(extreme=True), reduction=REDUCTIONS)
def test_cross_entropy_stays_finite_and_equal_for_extreme_logits(case, reduction):
    logits, targets, weight, label_smoothing = case
    value, grad = assert_same_value_and_gradient(losses.cross_entropy, F.cross_entropy, logits, targets,
                                                 weight, label_smoothing=label_smoothing, reduction=reduction)
    assert torch.isfinite(value).all() and torch.isfinite(grad).all()


@PROPERTY
@given(case=classification(probabilities=True), reduction=REDUCTIONS)
def test_cross_entropy_with_class_probabilities_equals_pytorch(case, reduction):
    logits, targets, weight, label_smoothing = case
    assert_same_value_and_gradient(losses.cross_entropy, F.cross_entropy, logits, targets, weight,
                                   label_smoothing=label_smoothing, reduction=reduction)


@pytest.mark.parametrize("probabilities", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_of_n_c_d_logits_averages_over_every_position(probabilities, weighted):
    # (N, C, d) logits: the mean is over N * d positions, not N rows. Chosen, not drawn, so that
    # this case is always tested.
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, generator=generator, dtype=torch.float64)
    if probabilities:
        targets = torch.rand(2, 3, 4, generator=generator, dtype=torch.float64).softmax(dim=1)
    else:
        targets = torch.randint(0, 3, (2, 4), generator=generator)
    weight = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64) if weighted else None
    for label_smoothing in (0.0, 0.1):
        assert_same_value_and_gradient(losses.cross_entropy, F.cross_entropy, logits, targets, weight,
                                       label_smoothing=label_smoothing, reduction="mean")


def test_cross_entropy_gradient_is_softmax_minus_onehot_over_n():
    logits = torch.tensor([[2.0, -1.0, 0.5], [1000.0, -1000.0, 0.0]], requires_grad=True)
    targets = torch.tensor([1, 2])
    losses.cross_entropy(logits, targets).backward()
    expected = (torch.softmax(logits.detach(), dim=1) - F.one_hot(targets, 3)) / 2
    torch.testing.assert_close(logits.grad, expected)


def test_weighted_mean_divides_by_the_targets_weights():
    logits, targets = torch.tensor([[0.0, 1.0], [2.0, 0.0], [0.5, 0.5]]), torch.tensor([0, 0, 1])
    weight = torch.tensor([1.0, 3.0])
    per_example = losses.cross_entropy(logits, targets, weight, reduction="none")
    torch.testing.assert_close(losses.cross_entropy(logits, targets, weight), per_example.sum() / 5)


# --- Bad input: refused with a clear message, where PyTorch refuses it too ----------------------

X, Y = torch.randn(3, 4), torch.tensor([0, 1, 3])
P = torch.tensor([0.2, 0.9])

BAD_INPUT = [
    # (ours, PyTorch's, exception, message)
    (lambda: losses.mean_squared_error(X, X, "avg"), lambda: F.mse_loss(X, X, reduction="avg"),
     ValueError, "unknown reduction 'avg': choose 'mean', 'sum' or 'none'"),
    (lambda: losses.mean_squared_error(torch.ones(3), torch.ones(3)[None]), None, ValueError,
     "prediction has shape (3,) but target has shape (1, 3): they must be the same"),
    (lambda: losses.mean_squared_error(torch.tensor([1, 2]), torch.tensor([1, 3])),
     lambda: F.mse_loss(torch.tensor([1, 2]), torch.tensor([1, 3])),
     TypeError, "prediction must be a floating-point tensor, got torch.int64"),
    (lambda: losses.mean_squared_error(P, torch.ones(2, dtype=torch.complex64)),
     lambda: F.mse_loss(P, torch.ones(2, dtype=torch.complex64)),
     TypeError, "target must be a real tensor, as in F.mse_loss, got torch.complex64: pass target.real"),
    (lambda: losses.binary_cross_entropy(torch.tensor([1.5, -0.1]), torch.ones(2)),
     lambda: F.binary_cross_entropy(torch.tensor([1.5, -0.1]), torch.ones(2)),
     ValueError, "probabilities must lie in [0, 1], but 2 of them do not (the first is 1.5): pass sigmoid(logits)"),
    (lambda: losses.binary_cross_entropy(torch.tensor([float("nan")]), torch.ones(1)),
     lambda: F.binary_cross_entropy(torch.tensor([float("nan")]), torch.ones(1)),
     ValueError, "probabilities must lie in [0, 1], but 1 of them do not (the first is nan)"),
    (lambda: losses.binary_cross_entropy(P, torch.tensor([1.0, 2.0])),
     lambda: F.binary_cross_entropy(P, torch.tensor([1.0, 2.0])),
     ValueError, "targets must lie in [0, 1], but 1 of them do not (the first is 2)"),
    (lambda: losses.binary_cross_entropy(P, torch.tensor([1, 0])),
     lambda: F.binary_cross_entropy(P, torch.tensor([1, 0])),
     TypeError, "targets must be a floating-point tensor, got torch.int64: convert class labels with targets.float()"),
    (lambda: losses.binary_cross_entropy(P, torch.ones(1)), lambda: F.binary_cross_entropy(P, torch.ones(1)),
     ValueError, "probabilities has shape (2,) but targets has shape (1,): they must be the same"),
    (lambda: losses.binary_cross_entropy(P, torch.ones(2, dtype=torch.float64)),
     lambda: F.binary_cross_entropy(P, torch.ones(2, dtype=torch.float64)),
     TypeError, "probabilities are torch.float32 but targets are torch.float64"),
    (lambda: losses.binary_cross_entropy_with_logits(P, torch.ones(2, 1)),
     lambda: F.binary_cross_entropy_with_logits(P, torch.ones(2, 1)),
     ValueError, "logits has shape (2,) but targets has shape (2, 1): they must be the same"),
    (lambda: losses.binary_cross_entropy_with_logits(P, torch.tensor([1, 0])),
     lambda: F.binary_cross_entropy_with_logits(P, torch.tensor([1, 0])),
     TypeError, "targets must be a floating-point tensor, got torch.int64"),
    (lambda: losses.cross_entropy(X, torch.tensor([1, 2, 4])), lambda: F.cross_entropy(X, torch.tensor([1, 2, 4])),
     IndexError, "class target 4 is out of range for 4 classes: class targets must be integers in [0, 3]; "
                 "labels numbered from 1? subtract 1"),
    (lambda: losses.cross_entropy(X, torch.tensor([0, -1, 2])), lambda: F.cross_entropy(X, torch.tensor([0, -1, 2])),
     IndexError, "class target -1 is out of range for 4 classes"),
    (lambda: losses.cross_entropy(X, torch.tensor([0, 1, 2.0])), lambda: F.cross_entropy(X, torch.tensor([0, 1, 2.0])),
     TypeError, "class targets must be integers (torch.long), got torch.float32: convert class indices with "
                "targets.long(), or give class probabilities as a floating-point tensor of the logits' shape (3, 4)"),
    (lambda: losses.cross_entropy(X, torch.tensor([True, False, True])),
     lambda: F.cross_entropy(X, torch.tensor([True, False, True])),
     TypeError, "class targets must be integers (torch.long), got torch.bool"),
    (lambda: losses.cross_entropy(X, torch.tensor([0, 1])), lambda: F.cross_entropy(X, torch.tensor([0, 1])),
     ValueError, "targets have shape (2,), but logits of shape (3, 4) need one class index per example, shape (3,)"),
    (lambda: losses.cross_entropy(X, Y, weight=torch.ones(3)), lambda: F.cross_entropy(X, Y, weight=torch.ones(3)),
     ValueError, "weight must hold one number per class, shape (4,), got shape (3,)"),
    (lambda: losses.cross_entropy(X, Y, weight=torch.ones(4, dtype=torch.float64)),
     lambda: F.cross_entropy(X, Y, weight=torch.ones(4, dtype=torch.float64)),
     TypeError, "weight is torch.float64 but logits are torch.float32"),
    (lambda: losses.cross_entropy(X, Y, label_smoothing=1.5), lambda: F.cross_entropy(X, Y, label_smoothing=1.5),
     ValueError, "label_smoothing must be a number in [0, 1], got 1.5"),
    (lambda: losses.cross_entropy(X, Y, reduction="average"), lambda: F.cross_entropy(X, Y, reduction="average"),
     ValueError, "unknown reduction 'average'"),
    (lambda: losses.cross_entropy(X.long(), Y), lambda: F.cross_entropy(X.long(), Y),
     TypeError, "logits must be a floating-point tensor, got torch.int64"),
    (lambda: losses.cross_entropy(torch.tensor(1.0), torch.tensor(0)),
     lambda: F.cross_entropy(torch.tensor(1.0), torch.tensor(0)),
     ValueError, "logits must have a class dimension"),
]


@pytest.mark.parametrize("ours, theirs, error, message", BAD_INPUT, ids=[m[:50] for *_, m in BAD_INPUT])
def test_bad_input_is_refused_with_a_clear_message_where_pytorch_refuses_it(ours, theirs, error, message):
    with pytest.raises(error) as raised:
        ours()
    assert message in str(raised.value)
    if theirs is not None:
        with pytest.raises(Exception):
            theirs()


def test_a_shape_mismatch_that_pytorch_only_warns_about_is_refused_and_the_fix_named():
    prediction, target = torch.zeros(3, 1), torch.arange(3.0)
    with pytest.warns(UserWarning, match="different to the input size"):
        F.mse_loss(prediction, target)
    with pytest.raises(ValueError, match=r"would broadcast them to \(3, 3\); use prediction.squeeze\(-1\)"):
        losses.mean_squared_error(prediction, target)


def test_ignore_index_targets_are_refused_with_the_reason():
    with pytest.raises(IndexError, match="ignore_index=-100, but this function has no ignore_index"):
        losses.cross_entropy(X, torch.tensor([0, -100, 1]))


def test_an_unbatched_example_needs_a_0d_target():
    torch.testing.assert_close(losses.cross_entropy(X[0], torch.tensor(2)), F.cross_entropy(X[0], torch.tensor(2)))
    with pytest.raises(ValueError, match=r"needs one class index, a 0-d tensor such as torch.tensor\(2\)"):
        losses.cross_entropy(X[0], torch.tensor([2]))


def test_nothing_warns():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        losses.cross_entropy(X, Y, torch.rand(4), 0.1)
        losses.binary_cross_entropy_with_logits(X, torch.rand(3, 4))


# --- The chapter's exercises: the helpers pass, typical wrong answers get precise messages -------


def _cross_entropy_without_padding(logits, targets, ignore_index=-100):
    # helpers.losses.cross_entropy has no ignore_index: leave those examples out first, as its
    # error message says.
    kept = targets != ignore_index
    return losses.cross_entropy(logits[kept], targets[kept])


@pytest.mark.parametrize("name, answer", [
    ("losses.mean_squared_error", losses.mean_squared_error),
    ("losses.log_softmax", losses.log_softmax),
    ("losses.cross_entropy", _cross_entropy_without_padding),
    ("losses.bce_with_logits", losses.binary_cross_entropy_with_logits),
])
def test_the_helpers_pass_the_exercises(name, answer):
    verdict = judge_answer(name, answer)
    assert verdict.status == PASSED, verdict.message


def _naive_bce_with_logits(logits, targets):
    p = torch.sigmoid(logits)
    return -(targets * torch.log(p) + (1 - targets) * torch.log(1 - p)).mean()


def _clamped_bce_with_logits(logits, targets, eps=1e-7):
    p = torch.sigmoid(logits)
    return -(targets * torch.log(p + eps) + (1 - targets) * torch.log(1 - p + eps)).mean()


def _where_bce_with_logits(logits, targets):
    positive = (1 - targets) * logits + torch.log1p(torch.exp(-logits))
    negative = -targets * logits + torch.log1p(torch.exp(logits))
    return torch.where(logits >= 0, positive, negative).mean()


def _detached_bce_with_logits(logits, targets):
    return torch.tensor(F.binary_cross_entropy_with_logits(logits, targets).item())


def _rows(log_p, targets):
    return log_p[torch.arange(len(targets)), targets]


def _masked_cross_entropy(logits, targets, ignore_index=-100):
    """Padding left out by multiplying with a mask: NaN when a left-out loss is inf or NaN."""
    keep = targets != ignore_index
    nll = -_rows(torch.log_softmax(logits, -1), targets.masked_fill(~keep, 0))
    return (nll * keep).sum() / keep.sum()


def _cross_entropy_over_n(logits, targets, ignore_index=-100):
    kept = targets != ignore_index
    return -_rows(torch.log_softmax(logits[kept], -1), targets[kept]).sum() / len(targets)


def _cross_entropy_ignoring_minus_100(logits, targets, ignore_index=-100):
    kept = targets != -100  # the argument is never used
    return -_rows(torch.log_softmax(logits[kept], -1), targets[kept]).mean()


WRONG_ANSWERS = [
    ("losses.mean_squared_error", lambda p, t: ((p - t) ** 2).sum(),
     "got tensor(1.5) of shape () (largest difference 1.12). That is the sum of the squared errors: "
     "divide by the number of elements"),
    ("losses.mean_squared_error", lambda p, t: ((p - t) ** 2).mean().sqrt(),
     "That is the root of the mean squared error (the RMSE): leave out the square root."),
    ("losses.mean_squared_error", lambda p, t: (p - t).abs().mean(), "That is the mean absolute error"),
    ("losses.mean_squared_error", lambda p, t: (p - t).mean(),
     "That averages the differences without squaring them"),
    ("losses.mean_squared_error", lambda p, t: ((p - t) ** 2).mean(dim=0),
     "on a prediction and target of shape (4, 3), expected shape (), got shape (3,). The loss is one number"),
    ("losses.mean_squared_error", lambda p, t: ((p - t) ** 2).sum() / len(p),  # the chapter's cell
     "on a prediction and target of shape (4, 3), expected tensor(2.25588) of shape (), got tensor(6.76763) "
     "of shape () (largest difference 4.51). That divides by len(prediction), the number of rows"),
    ("losses.log_softmax", lambda z: torch.softmax(z, -1).log(),
     "on the large logits [[1000.0, 0.0, -1000.0]], expected tensor([[0.0, -1000.0, -2000.0]]) of shape "
     "(1, 3), got tensor([[0.0, -inf, -inf]])"),
    ("losses.log_softmax", lambda z: (z.exp() / z.exp().sum(-1, keepdim=True)).log(),
     "the answer contains NaN: tensor([[nan, -inf, -inf]]) of shape (1, 3). In float32 exp(z) overflows"),
    ("losses.log_softmax", lambda z: z - z.exp().sum(0, keepdim=True).log(),
     "That normalises down the columns (dim=0)"),
    ("losses.log_softmax", lambda z: torch.softmax(z, -1), "That is the softmax itself"),
    ("losses.log_softmax", lambda z: z - torch.logsumexp(z, dim=1, keepdim=True),  # as log_softmax_rows
     "on logits of shape (2, 3, 4), the answer, a tensor of shape (2, 3, 4), differs most at ["),
    ("losses.log_softmax", lambda z: z - torch.logsumexp(z, dim=1, keepdim=True),
     "That normalises along dim=1, which is the last dimension only for 2-D logits"),
    ("losses.cross_entropy", lambda z, y: -torch.log_softmax(z, -1)[:, y].mean(),
     "log_p[:, targets] picks an N × N block"),
    ("losses.cross_entropy", lambda z, y: -_rows(torch.log_softmax(z, -1), y).sum(),
     "That is the sum over the batch: divide by the number of examples."),
    ("losses.cross_entropy", lambda z, y: _rows(torch.log_softmax(z, -1), y).mean(), "The sign is wrong"),
    ("losses.cross_entropy", lambda z, y: -(torch.log_softmax(z, -1) * F.one_hot(y, z.shape[-1])).mean(),
     "That divides by N × C"),
    ("losses.cross_entropy", lambda z, y: -_rows(torch.log_softmax(z, -1), y).mean(),  # no padding
     "on a batch of 5 examples and 4 classes with targets [3, -100, 1, -100, 2] (two padding), the answer "
     "raised IndexError: index -100 is out of bounds"),
    ("losses.cross_entropy", _masked_cross_entropy,
     "on targets [1, -100, 2] where the padding example's logits are [inf, 0.0, 0.0], the answer contains "
     "NaN: tensor(nan) of shape (). A left-out example's loss is inf or NaN here, and multiplying it by a "
     "mask of 0 still gives NaN (0 × inf): leave the examples out by indexing"),
    ("losses.cross_entropy", _cross_entropy_over_n,
     "That divides by all N examples, padding included: the mean is over the examples kept"),
    ("losses.cross_entropy", _cross_entropy_ignoring_minus_100,
     "on targets [0, 2, 0, 1] and ignore_index=0, expected tensor("),
    ("losses.cross_entropy", _cross_entropy_ignoring_minus_100,
     "The examples whose target equals ignore_index (here not -100) must be left out"),
    ("losses.cross_entropy", lambda z, y: -_rows(torch.softmax(z, -1), y).log().mean(),
     "on the large logits [[1000.0, 0.0, -1000.0], [0.0, 1000.0, -1000.0]] and targets [2, 1], expected "
     "tensor(1000.0) of shape (), got tensor(inf) of shape () (largest difference 1.8e+308). log(softmax(z)) "
     "overflows"),
    ("losses.bce_with_logits", _naive_bce_with_logits,
     "on logits [100.0, -100.0] and targets [1.0, 1.0], the answer contains NaN: tensor(nan) of shape (). "
     "In float32, sigmoid(z) rounds to exactly 1 for z above about 16.6"),
    ("losses.bce_with_logits", _clamped_bce_with_logits,
     "on logits [100.0, -100.0] and targets [1.0, 1.0], expected tensor(50.0) of shape (), got "
     "tensor(8.05905) of shape () (largest difference 41.9). The answer is finite but too small"),
    ("losses.bce_with_logits", lambda z, y: F.binary_cross_entropy(torch.sigmoid(z), y),
     "on logits [-200.0, 200.0, -1000.0, 1000.0] and targets [1.0, 0.0, 0.0, 1.0], expected tensor(100.0) "
     "of shape (), got tensor(50.0) of shape () (largest difference 50). The answer is finite but too small"),
    ("losses.bce_with_logits", lambda z, y: F.binary_cross_entropy_with_logits(z, y, reduction="sum"),
     "That is the sum over the batch"),
    ("losses.bce_with_logits", _where_bce_with_logits,
     "the values are right, but on logits [-200.0, -3.0, 0.0, 0.0, 0.5, 200.0] and targets "
     "[1.0, 0.0, 1.0, 0.0, 1.0, 0.0] the gradient with respect to the logits is "
     "[nan, 0.0079, -0.0833, 0.0833, -0.0629, nan], not (sigmoid(z) - y) / N = "
     "[-0.1667, 0.0079, -0.0833, 0.0833, -0.0629, 0.1667]: torch.where(condition, a, b) sends the "
     "gradient through both branches"),
    ("losses.bce_with_logits", _detached_bce_with_logits,
     "the values are right, but the result is not connected to the logits' graph"),
]


@pytest.mark.parametrize("name, answer, message", WRONG_ANSWERS,
                         ids=[f"{name}-{i}" for i, (name, *_) in enumerate(WRONG_ANSWERS)])
def test_a_typical_wrong_answer_is_told_what_to_change(name, answer, message):
    verdict = judge_answer(name, answer)
    assert verdict.status == FAILED
    assert message in verdict.message, verdict.message


def _textbook_bce_with_logits(logits, targets):
    return (logits.clamp(min=0) - logits * targets + torch.log1p(torch.exp(-logits.abs()))).mean()


def _clamped_branches_bce_with_logits(logits, targets):
    # Each branch's logits clamped to its sign: finite, but the clamps' slope at 0 is 0.
    z_pos, z_neg = logits.clamp(min=0), logits.clamp(max=0)
    positive = (1 - targets) * z_pos + torch.log(1 + torch.exp(-z_pos))
    negative = -targets * z_neg + torch.log(1 + torch.exp(z_neg))
    return torch.where(logits >= 0, positive, negative).mean()


@pytest.mark.parametrize("answer", [_textbook_bce_with_logits, _clamped_branches_bce_with_logits])
def test_a_bce_whose_gradient_is_wrong_only_at_zero_fails_and_is_told_so(answer):
    # Both have the right values everywhere and the right gradient away from z = 0; at 0 exactly
    # autograd takes a slope of 0 or 1 for the kink of clamp and abs, and the gradient is wrong
    # (the right one is sigmoid(0) - y = -0.5 or 0.5, divided by N).
    z = torch.zeros(2, requires_grad=True)
    answer(z, torch.tensor([1.0, 0.0])).backward()
    if torch.allclose(z.grad, torch.tensor([-0.25, 0.25])):
        # On torch 2.4 to 2.10, clamp's slope at its bound happens to give the right gradient here.
        pytest.skip(f"on torch {torch.__version__} this answer's gradient at z = 0 is right")
    verdict = judge_answer("losses.bce_with_logits", answer)
    assert verdict.status == FAILED
    assert verdict.message.endswith(": the gradient is wrong only at z = 0 exactly, where clamp, max and "
                                    "abs have a kink and autograd takes a slope of 0 or 1 for it; choose a "
                                    "branch's input with torch.where instead, or use the chapter's "
                                    "log-sum-exp form, whose shift m is a constant"), verdict.message


def test_the_branches_chosen_with_torch_where_pass():
    def where_branches(logits, targets):  # the chapter's reference solution
        nonnegative = logits >= 0
        z_pos, z_neg = torch.where(nonnegative, logits, 0.0), torch.where(nonnegative, 0.0, logits)
        positive = (1 - targets) * z_pos + torch.log(1 + torch.exp(-z_pos))
        negative = -targets * z_neg + torch.log(1 + torch.exp(z_neg))
        return torch.where(nonnegative, positive, negative).mean()

    assert judge_answer("losses.bce_with_logits", where_branches).status == PASSED


def test_the_starter_code_is_not_done_yet_with_a_hint():
    def starter(logits, targets):
        raise NotImplementedError

    verdict = judge_answer("losses.bce_with_logits", starter)
    assert verdict.status == NOT_DONE
    assert "Hint: the backward pass of torch.where reaches both branches" in verdict.message


# Found by mutation testing: each test below fails on a small, plausible change to the code.


SOME_LOGITS = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
SOME_TARGETS = torch.tensor([0, 1, 3])


def test_a_target_that_is_not_a_tensor_is_named():
    with pytest.raises(TypeError, match=r"target must be a tensor, got list: wrap it with torch.tensor"):
        losses.mean_squared_error(torch.zeros(2), [0.0, 1.0])


def test_negative_label_smoothing_is_refused():
    with pytest.raises(ValueError, match="label_smoothing must be a number in \\[0, 1\\], got -0.1"):
        losses.cross_entropy(SOME_LOGITS, SOME_TARGETS, label_smoothing=-0.1)


def test_label_smoothing_given_as_a_string_is_refused_with_the_message():
    with pytest.raises(ValueError, match="label_smoothing must be a number in \\[0, 1\\], got '0.1'"):
        losses.cross_entropy(SOME_LOGITS, SOME_TARGETS, label_smoothing="0.1")


def test_label_smoothing_of_exactly_one_is_allowed_as_in_torch():
    torch.testing.assert_close(losses.cross_entropy(SOME_LOGITS, SOME_TARGETS, label_smoothing=1.0),
                               F.cross_entropy(SOME_LOGITS, SOME_TARGETS, label_smoothing=1.0))


@pytest.mark.parametrize("weight", [None, torch.tensor([1.0, 2.0, 0.5])])
def test_a_minus_inf_logit_of_a_wrong_class_gives_torchs_finite_loss_without_smoothing(weight):
    # Masking a class with -inf is common; without label smoothing its log-probability is never
    # used, and multiplying it by a smoothing of 0 would give 0 * inf = NaN.
    logits = torch.tensor([[0.0, -float("inf"), 1.0], [2.0, 0.5, -float("inf")]], requires_grad=True)
    targets = torch.tensor([0, 1])
    ours = losses.cross_entropy(logits, targets, weight)
    theirs = F.cross_entropy(logits, targets, weight)
    assert torch.isfinite(ours)
    torch.testing.assert_close(ours, theirs)


def test_the_labels_from_1_hint_is_given_only_when_no_label_is_0():
    with pytest.raises(IndexError) as raised:
        losses.cross_entropy(SOME_LOGITS, torch.tensor([0, 1, 4]))
    assert "class targets must be integers in [0, 3]" in str(raised.value)
    assert "numbered from 1" not in str(raised.value)


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int64])
@pytest.mark.parametrize("prediction_dtype", [torch.float32, torch.float64])
def test_mse_takes_bool_and_integer_targets_as_torch_does(dtype, prediction_dtype):
    prediction = torch.tensor([0.2, -1.0, 3.5, 1.0], dtype=prediction_dtype)
    target = torch.tensor([1, 0, 1, 1]).to(dtype)
    for reduction in losses.REDUCTIONS:
        got, _ = assert_same_value_and_gradient(losses.mean_squared_error, F.mse_loss, prediction, target,
                                                reduction=reduction)
        assert got.dtype == prediction_dtype


def test_the_squeeze_hint_is_given_only_for_a_trailing_dimension_of_one():
    with pytest.raises(ValueError) as raised:
        losses.mean_squared_error(torch.zeros(3, 1), torch.zeros(1, 3))
    assert "squeeze" not in str(raised.value)


def test_an_empty_batch_gives_torchs_result():
    logits, targets = torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)
    for reduction in ("sum", "none"):
        torch.testing.assert_close(losses.cross_entropy(logits, targets, reduction=reduction),
                                   F.cross_entropy(logits, targets, reduction=reduction))
    assert losses.cross_entropy(logits, targets).isnan() and F.cross_entropy(logits, targets).isnan()


def test_uint8_class_targets_are_accepted_as_torch_accepts_them():
    torch.testing.assert_close(losses.cross_entropy(SOME_LOGITS, SOME_TARGETS.to(torch.uint8)), F.cross_entropy(SOME_LOGITS, SOME_TARGETS.to(torch.uint8)))


def test_integer_class_weights_are_refused_as_not_floating_point():
    with pytest.raises(TypeError, match="weight must be a floating-point tensor, got torch.int64"):
        losses.cross_entropy(SOME_LOGITS, SOME_TARGETS, weight=torch.ones(4, dtype=torch.long))


def test_log_softmax_refuses_integer_logits():
    with pytest.raises(TypeError, match="logits must be a floating-point tensor, got torch.int64"):
        losses.log_softmax(torch.tensor([[1, 2, 3]]))

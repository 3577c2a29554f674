"""Loss functions written from their equations, each equal to its ``torch.nn.functional`` twin.

Introduced in the chapter "Loss functions, from their equations" (book/losses.ipynb).

Every loss takes ``reduction``: ``"mean"`` (the default, as in PyTorch), ``"sum"``, or ``"none"``
(one loss per element or example, unreduced). Input that PyTorch refuses is refused here too, with
a message that says what is wrong and what to do. Where PyTorch only warns (``F.mse_loss`` on
shapes that broadcast), these refuse: a silent broadcast is almost always a bug.
"""

from __future__ import annotations

import torch

REDUCTIONS = ("mean", "sum", "none")

# F.binary_cross_entropy clamps each log at -100 so that a probability of exactly 0 or 1 gives a
# finite loss; we do the same.
LOG_FLOOR = -100.0
# ...and its backward divides by max(p (1 - p), 1e-12), so that the gradient is finite there too.
BCE_GRADIENT_FLOOR = 1e-12


def mean_squared_error(prediction: torch.Tensor, target: torch.Tensor,
                       reduction: str = "mean") -> torch.Tensor:
    """Mean squared error, ``F.mse_loss``: ``(1/N) * sum_i (prediction_i - target_i)**2``.

    ``prediction`` and ``target`` have the same shape ``(*)``; N is their number of elements.
    ``target`` may hold integers or bools (True counts as 1), as in PyTorch. Returns a scalar, or
    the squared errors of shape ``(*)`` with ``reduction="none"``.
    """
    _check_reduction(reduction)
    _check_floating(prediction, "prediction")
    _check_tensor(target, "target")
    if target.is_complex():
        raise TypeError(f"target must be a real tensor, as in F.mse_loss, got {target.dtype}: pass "
                        f"target.real if its real part is what you mean")
    _check_same_shape(prediction, "prediction", target, "target")
    if target.dtype == torch.bool:  # F.mse_loss counts True as 1 and False as 0; `-` refuses bools
        target = target.to(prediction.dtype)
    return _reduce((prediction - target) ** 2, reduction)


def binary_cross_entropy(probabilities: torch.Tensor, targets: torch.Tensor,
                         reduction: str = "mean") -> torch.Tensor:
    """Binary cross-entropy on probabilities, ``F.binary_cross_entropy``.

    ``-(1/N) * sum_i [y_i log p_i + (1 - y_i) log(1 - p_i)]``, with each log clamped at -100 as
    PyTorch does; the gradient is PyTorch's too, finite at p = 0 and p = 1 (an autograd
    function of its own computes it). ``probabilities`` p and ``targets`` y have the same shape ``(*)``
    and values in [0, 1]. For p = sigmoid(z) with a large ``|z|`` this form loses everything: prefer
    ``binary_cross_entropy_with_logits``.
    """
    _check_reduction(reduction)
    _check_floating(probabilities, "probabilities")
    _check_floating(targets, "targets", advice="convert class labels with targets.float()")
    _check_same_shape(probabilities, "probabilities", targets, "targets")
    if probabilities.dtype != targets.dtype:
        raise TypeError(f"probabilities are {probabilities.dtype} but targets are {targets.dtype}: "
                        f"give both the same dtype, e.g. targets.to(probabilities.dtype)")
    _check_unit_interval(probabilities, "probabilities", advice=(
        "pass sigmoid(logits), or better, give the logits themselves to "
        "binary_cross_entropy_with_logits"))
    _check_unit_interval(targets, "targets", advice="binary targets are 0 or 1")
    return _reduce(_BinaryCrossEntropy.apply(probabilities, targets), reduction)


class _BinaryCrossEntropy(torch.autograd.Function):
    """The BCE of each element, with the gradient PyTorch gives, also at p = 0 and p = 1.

    The derivative of the loss with respect to p is (p - y) / (p (1 - p)). Autograd through the
    clamped logs gives NaN where p is exactly 0 or 1, even for a right prediction (p = 1, y = 1),
    because it multiplies the clamp's zero slope by log's infinite one. PyTorch's backward
    (binary_cross_entropy_backward) instead divides by max(p (1 - p), 1e-12); this is that
    formula, so that the two agree everywhere. With respect to the targets, on which the loss
    depends linearly, PyTorch's gradient is log(1 - p) - log(p) = -logit(p), not clamped.
    """

    @staticmethod
    def forward(ctx, probabilities: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(probabilities, targets)
        log_p = torch.log(probabilities).clamp(min=LOG_FLOOR)
        log_1mp = torch.log1p(-probabilities).clamp(min=LOG_FLOOR)  # log(1 - p), exact for tiny p
        return -(targets * log_p + (1 - targets) * log_1mp)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        p, y = ctx.saved_tensors
        grad_p = grad_y = None
        if ctx.needs_input_grad[0]:
            grad_p = grad * (p - y) / ((1 - p) * p).clamp(min=BCE_GRADIENT_FLOOR)
        if ctx.needs_input_grad[1]:
            grad_y = -grad * torch.logit(p)
        return grad_p, grad_y


def binary_cross_entropy_with_logits(logits: torch.Tensor, targets: torch.Tensor,
                                     reduction: str = "mean") -> torch.Tensor:
    """Binary cross-entropy on logits, ``F.binary_cross_entropy_with_logits``.

    The BCE of p = sigmoid(z) rewritten so that sigmoid is never formed:
    ``loss_i = (1 - y_i) z_i + log(1 + exp(-z_i))``, where the log-sum-exp
    ``log(exp(0) + exp(-z)) = m + log(exp(-m) + exp(-z - m))`` with ``m = max(0, -z)`` never
    exponentiates a positive number. Finite for any finite logit; the gradient with respect to
    z is ``(sigmoid(z) - y) / N`` with ``reduction="mean"`` (without the ``/ N`` for "sum").
    ``logits`` z and ``targets`` y have the same shape ``(*)``.
    """
    _check_reduction(reduction)
    _check_floating(logits, "logits")
    _check_floating(targets, "targets", advice="convert class labels with targets.float()")
    _check_same_shape(logits, "logits", targets, "targets")
    # The shift m cancels in exact arithmetic, so it is a constant for the gradient.
    m = (-logits).clamp(min=0).detach()
    log_one_plus_exp_minus_z = m + torch.log(torch.exp(-m) + torch.exp(-logits - m))
    return _reduce((1 - targets) * logits + log_one_plus_exp_minus_z, reduction)


def log_softmax(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``log softmax(z)_c = z_c - m - log sum_k exp(z_k - m)``, with m = max_k z_k, along ``dim``.

    Subtracting the maximum keeps every exponent at most 0, so nothing overflows; the result has
    the shape of ``logits``. Equal to ``torch.log_softmax(logits, dim)``.
    """
    _check_floating(logits, "logits")
    # The shift cancels in exact arithmetic: it is a constant for the gradient.
    m = logits.amax(dim=dim, keepdim=True).detach()
    shifted = logits - m
    return shifted - torch.log(torch.exp(shifted).sum(dim=dim, keepdim=True))


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None,
                  label_smoothing: float = 0.0, reduction: str = "mean") -> torch.Tensor:
    """Softmax cross-entropy, ``F.cross_entropy`` (without ``ignore_index``).

    Shapes: ``logits`` (N, C), (C,) or (N, C, d1, ...); ``targets`` either class indices
    (integers in [0, C)) of shape (N,), () or (N, d1, ...), or class probabilities of the logits'
    shape. With log p = log_softmax(z) over the class dimension, class weights w (shape (C,),
    all ones by default) and label smoothing eps, the loss of example i with class y_i is::

        l_i = (1 - eps) w[y_i] (-log p_{i, y_i})
              + (eps / C) sum_c w_c (-log p_{i, c})

    and ``"mean"`` is the *weighted* mean ``sum_i l_i / sum_i w[y_i]``. With probabilities q,
    smoothed to q' = (1 - eps) q + eps / C, ``l_i = -sum_c w_c q'_{i, c} log p_{i, c}`` and
    ``"mean"`` divides by the number of examples. Both as PyTorch defines them.
    """
    _check_reduction(reduction)
    _check_floating(logits, "logits")
    if logits.dim() == 0:
        raise ValueError("logits must have a class dimension: shape (C,), (N, C) or (N, C, d1, ...), "
                         "got a scalar")
    if not isinstance(label_smoothing, (int, float)) or not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be a number in [0, 1], got {label_smoothing!r}")
    _check_tensor(targets, "targets")
    if logits.dim() == 1:  # one unbatched example: compute it as a batch of one
        if targets.shape not in ((), logits.shape):
            raise ValueError(f"targets have shape {tuple(targets.shape)}, but one unbatched example "
                             f"(logits of shape {tuple(logits.shape)}) needs one class index, a "
                             f"0-d tensor such as torch.tensor(2), or class probabilities of shape "
                             f"{tuple(logits.shape)}")
        batched = cross_entropy(logits[None], targets[None], weight, label_smoothing, reduction)
        return batched[0] if reduction == "none" else batched

    n_classes = logits.shape[1]
    class_weight = _class_weight(weight, n_classes, logits)
    log_p = log_softmax(logits, dim=1)
    weight_along_classes = class_weight.view(1, n_classes, *([1] * (logits.dim() - 2)))

    if targets.is_floating_point() and targets.shape == logits.shape:  # class probabilities
        if label_smoothing > 0:
            targets = targets * (1 - label_smoothing) + label_smoothing / n_classes
        losses = -(log_p * targets * weight_along_classes).sum(dim=1)
        if reduction == "mean":
            return losses.sum() / (logits.numel() / n_classes)
        return _reduce(losses, reduction)

    _check_class_targets(targets, logits)
    targets = targets.long()
    target_weight = class_weight[targets]  # w[y_i], shape of targets
    nll = -log_p.gather(1, targets.unsqueeze(1)).squeeze(1) * target_weight
    if label_smoothing > 0:  # PyTorch skips the term entirely at 0, so do we (0 * inf is NaN)
        smooth = -(log_p * weight_along_classes).sum(dim=1)
        losses = (1 - label_smoothing) * nll + (label_smoothing / n_classes) * smooth
    else:
        losses = nll
    if reduction == "mean":
        return losses.sum() / target_weight.sum()
    return _reduce(losses, reduction)


# --- Checks of the input, each with a message that says what to do ---------------------------


def _reduce(losses: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    return losses


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}: choose 'mean', 'sum' or 'none'")


def _check_tensor(x, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(x).__name__}: wrap it with torch.tensor(...)")


def _check_floating(x, name: str, advice: str = "convert it with .float()") -> None:
    _check_tensor(x, name)
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}: {advice}")


def _check_same_shape(a: torch.Tensor, a_name: str, b: torch.Tensor, b_name: str) -> None:
    if a.shape == b.shape:
        return
    hint = ""
    try:
        broadcast = tuple(torch.broadcast_shapes(a.shape, b.shape))
        hint = f" (PyTorch would broadcast them to {broadcast}"
        if a.dim() == b.dim() + 1 and a.shape[-1] == 1:
            hint += f"; use {a_name}.squeeze(-1)"
        hint += ")"
    except RuntimeError:
        pass
    raise ValueError(f"{a_name} has shape {tuple(a.shape)} but {b_name} has shape {tuple(b.shape)}: "
                     f"they must be the same{hint}")


def _check_unit_interval(x: torch.Tensor, name: str, advice: str) -> None:
    outside = ~((x >= 0) & (x <= 1))  # NaN is outside too
    if outside.any():
        first = x[outside][0].item()
        raise ValueError(f"{name} must lie in [0, 1], but {int(outside.sum())} of them do not "
                         f"(the first is {first:g}): {advice}")


def _class_weight(weight: torch.Tensor | None, n_classes: int, logits: torch.Tensor) -> torch.Tensor:
    if weight is None:  # all ones: the weighted mean is then the plain mean
        return torch.ones(n_classes, dtype=logits.dtype, device=logits.device)
    _check_floating(weight, "weight")
    if weight.shape != (n_classes,):
        raise ValueError(f"weight must hold one number per class, shape ({n_classes},), "
                         f"got shape {tuple(weight.shape)}")
    if weight.dtype != logits.dtype:
        raise TypeError(f"weight is {weight.dtype} but logits are {logits.dtype}: "
                        f"give both the same dtype, e.g. weight.to(logits.dtype)")
    return weight


def _check_class_targets(targets: torch.Tensor, logits: torch.Tensor) -> None:
    n_classes = logits.shape[1]
    class_shape = (logits.shape[0],) + tuple(logits.shape[2:])
    if targets.is_floating_point() or targets.dtype == torch.bool or targets.is_complex():
        raise TypeError(f"class targets must be integers (torch.long), got {targets.dtype}: convert "
                        f"class indices with targets.long(), or give class probabilities as a "
                        f"floating-point tensor of the logits' shape {tuple(logits.shape)}")
    if tuple(targets.shape) != class_shape:
        raise ValueError(f"targets have shape {tuple(targets.shape)}, but logits of shape "
                         f"{tuple(logits.shape)} need one class index per example, shape "
                         f"{class_shape} (or class probabilities of shape {tuple(logits.shape)})")
    if targets.numel() == 0:
        return
    low, high = int(targets.min()), int(targets.max())
    if low < 0 or high >= n_classes:
        bad = low if low < 0 else high
        advice = f"class targets must be integers in [0, {n_classes - 1}]"
        if bad == n_classes and low >= 1:
            advice += "; labels numbered from 1? subtract 1"
        if bad == -100:
            advice += ("; F.cross_entropy skips targets equal to ignore_index=-100, but this "
                       "function has no ignore_index: leave those examples out")
        raise IndexError(f"class target {bad} is out of range for {n_classes} classes: {advice}")

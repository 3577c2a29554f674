"""Measuring a classifier: confusion matrix, accuracy, precision, recall, F1, and pictures of both.

Introduced in the chapter "Evaluating a classifier" (book/evaluation.ipynb). In short::

    predictions = collect_predictions(model, loaders.validation, device)
    confusion = confusion_matrix(predictions.targets, predictions.predicted,
                                 num_classes=10)
    print(classification_report(confusion, loaders.classes))
    plot_confusion_matrix(confusion, loaders.classes)

Labels are class indices ``0 .. K-1``. The confusion matrix ``C`` has one row per *true* class and
one column per *predicted* class (as in scikit-learn): ``C[i, j]`` counts the samples of class
``i`` predicted as ``j``. Every per-class metric is read from it: ``TP_k = C[k, k]``,
``FP_k = sum_i C[i, k] - TP_k`` (column ``k``), ``FN_k = sum_j C[k, j] - TP_k`` (row ``k``).

A ratio whose denominator is zero is defined as 0, like scikit-learn's ``zero_division=0``: a
class that is never predicted has precision 0, a class with no samples has recall 0, and a class
with neither has F1 0. Macro averages are taken over all ``K`` classes, those included.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from helpers.data import plot_image_grid
from helpers.training import to_device


# --- Checking the input ------------------------------------------------------------------------------


def _as_labels(values, name: str) -> torch.Tensor:
    """``values`` (a 1-D tensor or sequence of class indices) as a 1-D int64 tensor on the CPU."""
    if not isinstance(values, torch.Tensor):
        try:
            values = torch.as_tensor(values)
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(f"{name} must be a 1-D tensor or sequence of class indices (integers), "
                            f"got {type(values).__name__} ({error})") from None
    if values.numel() == 0 and values.dim() == 1:
        return torch.zeros(0, dtype=torch.int64)  # torch.as_tensor([]) is float32; no labels is no labels
    if values.dim() != 1:
        hint = ""
        if values.dim() == 2 and values.shape[1] == 1:  # a column of labels; argmax of it would be all 0
            hint = ": it looks like a column of labels; take .squeeze(1) (or .flatten()) first"
        elif values.dim() == 2:
            hint = ": it looks like scores per class (logits or probabilities); take .argmax(dim=1) first"
        raise ValueError(f"{name} must be a 1-D tensor of class indices, one per sample, got shape "
                         f"{tuple(values.shape)}{hint}")
    if values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class indices, got dtype {values.dtype}: predicted "
                        f"classes are logits.argmax(dim=1), and labels from a dataset are integers")
    return values.detach().to("cpu", torch.int64)


def _check_num_classes(num_classes) -> int:
    """``num_classes`` as a Python int of at least 1; any integer type is accepted (a NumPy or a 0-d
    tensor integer too, through ``operator.index``), but not a bool or a float."""
    # operator.index takes True (and a bool tensor) as 1, but a bool is no count of classes.
    is_bool = isinstance(num_classes, (bool, np.bool_)) or (
        isinstance(num_classes, torch.Tensor) and num_classes.dtype == torch.bool)
    try:
        count = operator.index(num_classes)
    except TypeError:
        count = None
    if count is None or is_bool:
        raise TypeError(f"num_classes must be a positive integer, got {num_classes!r} "
                        f"({type(num_classes).__name__}): the number of classes, e.g. len(classes)")
    if count < 1:
        raise ValueError(f"num_classes must be a positive integer, got {count}")
    return count


def _check_labels(y_true, y_pred, num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Both label vectors as int64 tensors of the same length, in ``0 .. num_classes-1``."""
    y_true, y_pred = _as_labels(y_true, "y_true"), _as_labels(y_pred, "y_pred")
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} labels but y_pred has {len(y_pred)}: they must "
                         f"describe the same samples, in the same order")
    if num_classes is not None:
        num_classes = _check_num_classes(num_classes)
        for name, labels in (("y_true", y_true), ("y_pred", y_pred)):
            outside = labels[(labels < 0) | (labels >= num_classes)]
            if len(outside):
                raise ValueError(f"{name} holds the label {outside[0].item()}, outside 0..{num_classes - 1} "
                                 f"(num_classes={num_classes}): labels are class indices starting at 0")
    return y_true, y_pred


def _check_confusion(confusion) -> torch.Tensor:
    """A square, non-negative confusion matrix (K, K), as float64 (exact for any real count)."""
    confusion = torch.as_tensor(confusion)
    if confusion.dim() != 2 or confusion.shape[0] != confusion.shape[1] or confusion.shape[0] == 0:
        raise ValueError(f"a confusion matrix is square, (K, K) for K classes, got shape {tuple(confusion.shape)}")
    if confusion.is_complex() or confusion.dtype == torch.bool:
        raise TypeError(f"a confusion matrix holds counts, got dtype {confusion.dtype}")
    confusion = confusion.detach().to("cpu", torch.float64)
    if not torch.isfinite(confusion).all() or (confusion < 0).any():
        raise ValueError("a confusion matrix holds counts, which are finite and never negative")
    return confusion


def _check_class_names(classes, num_classes: int) -> list[str]:
    """``classes`` as a list of ``num_classes`` strings, one name per row of the confusion matrix."""
    if isinstance(classes, str):  # a string is a sequence too, of one-letter "names"
        raise TypeError(f"classes must be a list of class names, got the string {classes!r}: pass a list "
                        f"of {num_classes} names, e.g. loaders.classes")
    try:
        names = list(classes)
    except TypeError:
        raise TypeError(f"classes must be a list of class names, got {type(classes).__name__}: pass a list "
                        f"of {num_classes} names, e.g. loaders.classes") from None
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for a {num_classes}x{num_classes} confusion matrix")
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"class names must be strings, got {name!r} ({type(name).__name__}): pass the "
                            f"names of the classes (e.g. loaders.classes), not their indices")
    return names


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator``, with 0 where the denominator is 0 (scikit-learn's zero_division=0)."""
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return torch.where(denominator > 0, numerator / safe, torch.zeros_like(numerator)).float()


# --- Counting ------------------------------------------------------------------------------------------


def confusion_matrix(y_true, y_pred, num_classes: int) -> torch.Tensor:
    """The confusion matrix ``C`` (K, K) of int64 counts, ``K = num_classes``.

    ``C[i, j] = #{n : y_true[n] = i and y_pred[n] = j}``: rows are the true classes, columns the
    predicted ones. ``y_true`` and ``y_pred`` are (N,) class indices in ``0 .. K-1``. Row sums are
    the class counts, column sums how often each class was predicted, the trace the correct ones.
    """
    num_classes = _check_num_classes(num_classes)
    y_true, y_pred = _check_labels(y_true, y_pred, num_classes)
    # Each pair (i, j) gets its own bin i * K + j: one bincount counts all K * K pairs at once.
    pairs = y_true * num_classes + y_pred
    return torch.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def accuracy(y_true, y_pred) -> float:
    """The fraction of samples predicted right: ``(1/N) sum_n [y_pred[n] = y_true[n]]``.

    ``y_true`` and ``y_pred`` are (N,) class indices, ``N >= 1``. Equal to ``trace(C) / N``.
    """
    y_true, y_pred = _check_labels(y_true, y_pred)
    if len(y_true) == 0:
        raise ValueError("the accuracy of no samples is undefined: y_true and y_pred are empty")
    return (y_true == y_pred).double().mean().item()


# --- Per-class metrics, from the confusion matrix ----------------------------------------------------


def precision(confusion) -> torch.Tensor:
    """Per-class precision (K,): of the samples predicted as ``k``, the fraction that are ``k``.

    ``P_k = TP_k / (TP_k + FP_k) = C[k, k] / sum_i C[i, k]`` (a column of ``C``); 0 for a class
    that is never predicted.
    """
    confusion = _check_confusion(confusion)
    return _ratio(confusion.diagonal(), confusion.sum(dim=0))


def recall(confusion) -> torch.Tensor:
    """Per-class recall (K,): of the samples of class ``k``, the fraction predicted as ``k``.

    ``R_k = TP_k / (TP_k + FN_k) = C[k, k] / sum_j C[k, j]`` (a row of ``C``); 0 for a class with
    no samples.
    """
    confusion = _check_confusion(confusion)
    return _ratio(confusion.diagonal(), confusion.sum(dim=1))


def f1_score(confusion) -> torch.Tensor:
    """Per-class F1 (K,): the harmonic mean of precision and recall.

    ``F1_k = 2 P_k R_k / (P_k + R_k) = 2 TP_k / (2 TP_k + FP_k + FN_k)``, computed in the second
    form, which needs no special case when ``P_k + R_k = 0``: then ``TP_k = 0`` and F1 is 0.
    """
    confusion = _check_confusion(confusion)
    true_positives = confusion.diagonal()
    false_positives = confusion.sum(dim=0) - true_positives
    false_negatives = confusion.sum(dim=1) - true_positives
    return _ratio(2 * true_positives, 2 * true_positives + false_positives + false_negatives)


def macro_average(per_class) -> float:
    """The unweighted mean over all K classes, ``(1/K) sum_k m_k``, of a per-class metric (K,).

    Every class counts the same, however many samples it has, and classes whose metric was
    defined as 0 (never predicted, or absent) stay in the mean.
    """
    per_class = torch.as_tensor(per_class)
    if per_class.dim() != 1 or len(per_class) == 0:
        raise ValueError(f"expected one value per class, shape (K,), got shape {tuple(per_class.shape)}")
    if torch.isnan(per_class.double()).any():
        raise ValueError("the per-class values contain NaN: define the metric of a class with a zero "
                         "denominator as 0 (as helpers.metrics does) rather than leaving it out")
    return per_class.double().mean().item()


def micro_f1(confusion) -> float:
    """F1 from the counts pooled over all classes: ``2 TP / (2 TP + FP + FN)``, ``TP = sum_k TP_k`` etc.

    For single-label classification every error is one FP (of the predicted class) and one FN (of
    the true class), so ``FP = FN = N - TP`` and micro-F1 equals the accuracy, ``trace(C) / N``.
    """
    confusion = _check_confusion(confusion)
    true_positives = confusion.diagonal().sum()
    false_positives = (confusion.sum(dim=0) - confusion.diagonal()).sum()
    false_negatives = (confusion.sum(dim=1) - confusion.diagonal()).sum()
    denominator = 2 * true_positives + false_positives + false_negatives
    if denominator == 0:
        raise ValueError("the confusion matrix counts no samples")
    return (2 * true_positives / denominator).item()


def classification_report(confusion, classes: Sequence[str]) -> str:
    """A table: precision, recall, F1 and support (samples) per class, then accuracy and macro averages."""
    confusion = _check_confusion(confusion)
    classes = _check_class_names(classes, len(confusion))
    columns = (precision(confusion), recall(confusion), f1_score(confusion))
    support = confusion.sum(dim=1)
    width = max(len(label) for label in (*classes, "accuracy", "macro average"))  # the label column
    lines = [f"{'':<{width}} precision  recall      F1  support"]
    for k, name in enumerate(classes):
        p, r, f = (float(column[k]) for column in columns)
        lines.append(f"{name:<{width}} {p:>9.3f} {r:>7.3f} {f:>7.3f} {int(support[k]):>8d}")
    total = int(support.sum())
    correct = float(confusion.diagonal().sum() / total) if total else math.nan
    lines.append("")
    lines.append(f"{'accuracy':<{width}} {'':>9} {'':>7} {correct:>7.3f} {total:>8d}")
    macro = [macro_average(column) for column in columns]
    lines.append(f"{'macro average':<{width}} {macro[0]:>9.3f} {macro[1]:>7.3f} {macro[2]:>7.3f} {total:>8d}")
    return "\n".join(lines)


# --- A model's predictions ------------------------------------------------------------------------------


@dataclass
class Predictions:
    """A model's outputs over a loader, in the loader's order, on the CPU."""

    logits: torch.Tensor  # (N, K): the model's scores
    targets: torch.Tensor  # (N,): the true class indices

    @property
    def predicted(self) -> torch.Tensor:
        """The predicted classes (N,): the index of the largest score, ``argmax_k logits[n, k]``."""
        return self.logits.argmax(dim=1)


@torch.no_grad()
def collect_predictions(model: nn.Module, loader, device: torch.device | str) -> Predictions:
    """Run ``model`` over every batch of ``loader`` in eval mode and keep its outputs and the targets.

    The batches of ``(inputs, targets)`` must give outputs (B, K); results come back on the CPU,
    concatenated in the loader's order (so, with an unshuffled loader, in the dataset's order).
    The model's mode is restored afterwards.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    all_logits, all_targets = [], []
    try:
        for inputs, targets in loader:
            outputs = model(to_device(inputs, device))
            if not isinstance(outputs, torch.Tensor) or outputs.dim() != 2:
                shape = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
                raise ValueError(f"expected the model to return scores of shape (batch, classes), got {shape}")
            all_logits.append(outputs.float().cpu())
            all_targets.append(torch.as_tensor(targets).cpu())
    finally:
        model.train(was_training)
    if not all_logits:
        raise ValueError("the loader gave no batches")
    return Predictions(torch.cat(all_logits), torch.cat(all_targets))


# --- Pictures ------------------------------------------------------------------------------------------------


def plot_confusion_matrix(confusion, classes: Sequence[str], ax=None, title: str | None = None):
    """Draw ``C`` as a grid: the counts written in, each cell shaded by its share of its row.

    The shade of ``C[i, j]`` is ``C[i, j] / sum_j C[i, j]``, the fraction of class ``i`` predicted as
    ``j``, so the diagonal shows each class's recall whatever its size. Returns the figure.
    """
    confusion = _check_confusion(confusion)
    k = len(confusion)
    classes = _check_class_names(classes, k)
    shares = confusion / confusion.sum(dim=1, keepdim=True).clamp_min(1)
    if ax is None:
        _, ax = plt.subplots(figsize=(0.55 * k + 2.2, 0.55 * k + 1.6))
    ax.imshow(shares.numpy(), cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            count = confusion[i, j].item()
            text = f"{count:.0f}" if float(count).is_integer() else f"{count:.2f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=9 if k > 6 else 11,
                    color="white" if shares[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), classes, rotation=45, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if title:
        ax.set_title(title)
    figure = ax.figure
    figure.tight_layout()
    return figure


def plot_misclassified(dataset, targets, predicted, classes: Sequence[str], *, mean=None, std=None,
                       count: int = 18, columns: int = 6):
    """A grid of ``count`` misclassified images of ``dataset``, each titled "true -> predicted".

    ``targets`` and ``predicted`` are (N,) class indices in the dataset's order (from
    ``collect_predictions`` over an unshuffled loader); ``dataset[n]`` is ``(image (3, H, W), label)``,
    normalised images being undone with ``mean`` and ``std``. The images are spread evenly over
    all the misclassified ones, in the dataset's order: datasets stored class by class (such as
    an image-folder tree) would otherwise show mistakes of the first class only. Returns the figure.
    """
    targets, predicted = _check_labels(targets, predicted, len(classes))
    if len(targets) != len(dataset):
        raise ValueError(f"{len(targets)} predictions for a dataset of {len(dataset)} images: collect them "
                         f"over a loader of this very dataset")
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    wrong = torch.nonzero(targets != predicted).flatten()
    if len(wrong) > count:
        wrong = wrong[torch.linspace(0, len(wrong) - 1, count).round().long()]
    wrong = wrong.tolist()
    if not wrong:
        figure, ax = plt.subplots(figsize=(4, 1))
        ax.axis("off")
        ax.text(0.5, 0.5, "every image was classified correctly", ha="center", va="center")
        return figure
    images, labels = zip(*(dataset[n] for n in wrong))
    for n, label in zip(wrong, labels):
        if int(label) != int(targets[n]):
            raise ValueError(f"image {n} of the dataset has label {int(label)} but the targets say "
                             f"{int(targets[n])}: were the predictions collected over a shuffled loader?")
    return plot_image_grid(torch.stack(list(images)), list(labels), classes,
                           predictions=predicted[wrong].tolist(), mean=mean, std=std,
                           columns=min(columns, len(wrong)))

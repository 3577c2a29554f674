"""helpers.metrics: hand-made cases with known answers, properties against brute force, errors,
and the exercises of the evaluation chapter telling typical wrong answers what is wrong."""

from fractions import Fraction

import matplotlib
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from helpers.exercises import FAILED, NOT_DONE, PASSED, judge_answer
from helpers.metrics import (accuracy, classification_report, collect_predictions, confusion_matrix, f1_score,
                             macro_average, micro_f1, plot_confusion_matrix, plot_misclassified, precision,
                             recall)

matplotlib.use("Agg")

# --- A hand-made case, worked out on paper -----------------------------------------------------------
#
# Three classes, ten samples:
#   y_true = 0 0 0 0 1 1 2 2 2 2
#   y_pred = 0 0 1 2 1 0 2 2 1 2
# Row i counts the samples of true class i by predicted class:
#   C = [[2, 1, 1],     row sums (support)      4, 2, 4
#        [1, 1, 0],     column sums (predicted) 3, 3, 4
#        [0, 1, 3]]     trace 6, so accuracy 6/10
# precision = diagonal / column sums = 2/3, 1/3, 3/4
# recall    = diagonal / row sums    = 2/4, 1/2, 3/4
# F1 = 2PR / (P + R) = 2TP / (2TP + FP + FN):
#   class 0: 4 / (4 + 1 + 2) = 4/7;  class 1: 2 / (2 + 2 + 1) = 2/5;  class 2: 6 / (6 + 1 + 1) = 3/4
# macro precision = (2/3 + 1/3 + 3/4) / 3 = 7/12, macro recall = (1/2 + 1/2 + 3/4) / 3 = 7/12,
# macro F1 = (4/7 + 2/5 + 3/4) / 3 = 241/420.

Y_TRUE = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
Y_PRED = [0, 0, 1, 2, 1, 0, 2, 2, 1, 2]
CONFUSION = [[2, 1, 1], [1, 1, 0], [0, 1, 3]]


def _floats(*values) -> torch.Tensor:
    return torch.tensor([float(v) for v in values])


def test_hand_made_confusion_matrix_and_accuracy():
    confusion = confusion_matrix(Y_TRUE, Y_PRED, num_classes=3)
    assert confusion.dtype == torch.int64
    assert confusion.tolist() == CONFUSION
    assert accuracy(Y_TRUE, Y_PRED) == pytest.approx(0.6)


def test_hand_made_per_class_metrics():
    confusion = torch.tensor(CONFUSION)
    torch.testing.assert_close(precision(confusion), _floats(Fraction(2, 3), Fraction(1, 3), Fraction(3, 4)))
    torch.testing.assert_close(recall(confusion), _floats(0.5, 0.5, 0.75))
    torch.testing.assert_close(f1_score(confusion), _floats(Fraction(4, 7), Fraction(2, 5), Fraction(3, 4)))


def test_hand_made_macro_and_micro_averages():
    confusion = torch.tensor(CONFUSION)
    assert macro_average(precision(confusion)) == pytest.approx(7 / 12)
    assert macro_average(recall(confusion)) == pytest.approx(7 / 12)
    assert macro_average(f1_score(confusion)) == pytest.approx(241 / 420)
    assert micro_f1(confusion) == pytest.approx(0.6)


def test_a_class_never_predicted_has_precision_and_f1_zero():
    # Class 2 has two samples, both predicted as 1: no column-2 predictions at all.
    confusion = confusion_matrix([0, 1, 2, 2], [0, 1, 1, 1], num_classes=3)
    assert confusion.tolist() == [[1, 0, 0], [0, 1, 0], [0, 2, 0]]
    torch.testing.assert_close(precision(confusion), _floats(1, Fraction(1, 3), 0))
    torch.testing.assert_close(recall(confusion), _floats(1, 1, 0))
    torch.testing.assert_close(f1_score(confusion), _floats(1, 0.5, 0))
    # It stays in the macro average: (1 + 1/2 + 0) / 3.
    assert macro_average(f1_score(confusion)) == pytest.approx(0.5)


def test_a_class_with_no_samples_has_zeros_and_counts_in_the_macro_average():
    # Class 2 neither occurs nor is predicted; class 0 is predicted once where it is wrong.
    confusion = confusion_matrix([0, 0, 1, 1], [0, 0, 0, 1], num_classes=3)
    assert confusion.tolist() == [[2, 0, 0], [1, 1, 0], [0, 0, 0]]
    torch.testing.assert_close(precision(confusion), _floats(Fraction(2, 3), 1, 0))
    torch.testing.assert_close(recall(confusion), _floats(1, 0.5, 0))
    torch.testing.assert_close(f1_score(confusion), _floats(0.8, Fraction(2, 3), 0))
    assert macro_average(recall(confusion)) == pytest.approx(0.5)


def test_perfect_predictions():
    labels = [2, 0, 1, 1, 2]
    confusion = confusion_matrix(labels, labels, num_classes=3)
    assert confusion.tolist() == [[1, 0, 0], [0, 2, 0], [0, 0, 2]]
    for metric in (precision, recall, f1_score):
        torch.testing.assert_close(metric(confusion), torch.ones(3))
    assert accuracy(labels, labels) == 1.0


def test_tensors_and_lists_are_accepted_alike():
    as_tensors = confusion_matrix(torch.tensor(Y_TRUE), torch.tensor(Y_PRED, dtype=torch.int32), 3)
    assert as_tensors.tolist() == CONFUSION
    assert accuracy(torch.tensor(Y_TRUE), Y_PRED) == pytest.approx(0.6)


def test_classification_report_lists_every_class_and_the_averages():
    report = classification_report(torch.tensor(CONFUSION), ["cat", "dog", "frog"])
    lines = report.splitlines()
    assert lines[0].split() == ["precision", "recall", "F1", "support"]
    assert lines[1].split() == ["cat", "0.667", "0.500", "0.571", "4"]
    assert lines[-2].split() == ["accuracy", "0.600", "10"]
    assert lines[-1].split() == ["macro", "average", "0.583", "0.583", "0.574", "10"]


@pytest.mark.parametrize("classes", [["cat", "dog", "frog"], ["a", "b", "a class name this long"]])
def test_classification_report_columns_line_up(classes):
    lines = classification_report(torch.tensor(CONFUSION), classes).splitlines()
    filled = [line for line in lines if line]
    assert len({len(line) for line in filled}) == 1, lines  # "macro average" is 13 characters
    assert lines[0].index("F1") == lines[-1].index("0.574") + 3  # numbers end under their heading


# --- Properties, against brute force -------------------------------------------------------------------


@st.composite
def labelled_samples(draw, max_classes=6, max_samples=60):
    num_classes = draw(st.integers(1, max_classes))
    n = draw(st.integers(1, max_samples))
    labels = st.lists(st.integers(0, num_classes - 1), min_size=n, max_size=n)
    return draw(labels), draw(labels), num_classes


def _brute_force_confusion(y_true, y_pred, num_classes):
    confusion = [[0] * num_classes for _ in range(num_classes)]
    for t, p in zip(y_true, y_pred):
        confusion[t][p] += 1
    return confusion


def _brute_force_per_class(y_true, y_pred, num_classes):
    """Precision, recall and F1 of each class by counting samples one by one (zero_division=0)."""
    results = []
    for k in range(num_classes):
        tp = sum(1 for t, p in zip(y_true, y_pred) if t == k and p == k)
        fp = sum(1 for t, p in zip(y_true, y_pred) if t != k and p == k)
        fn = sum(1 for t, p in zip(y_true, y_pred) if t == k and p != k)
        p_k = tp / (tp + fp) if tp + fp else 0.0
        r_k = tp / (tp + fn) if tp + fn else 0.0
        f_k = 2 * p_k * r_k / (p_k + r_k) if p_k + r_k else 0.0
        results.append((p_k, r_k, f_k))
    return [torch.tensor(column) for column in zip(*results)]


@settings(max_examples=150, deadline=None)
@given(labelled_samples())
def test_confusion_matrix_equals_a_brute_force_count(sample):
    y_true, y_pred, k = sample
    confusion = confusion_matrix(y_true, y_pred, k)
    assert confusion.tolist() == _brute_force_confusion(y_true, y_pred, k)
    # Row sums are the class counts, column sums the prediction counts, the trace the correct ones.
    assert confusion.sum(dim=1).tolist() == [y_true.count(c) for c in range(k)]
    assert confusion.sum(dim=0).tolist() == [y_pred.count(c) for c in range(k)]
    assert confusion.trace().item() == sum(t == p for t, p in zip(y_true, y_pred))


@settings(max_examples=150, deadline=None)
@given(labelled_samples())
def test_per_class_metrics_equal_brute_force_and_lie_in_zero_one(sample):
    y_true, y_pred, k = sample
    confusion = confusion_matrix(y_true, y_pred, k)
    want_p, want_r, want_f = _brute_force_per_class(y_true, y_pred, k)
    got_p, got_r, got_f = precision(confusion), recall(confusion), f1_score(confusion)
    torch.testing.assert_close(got_p, want_p)
    torch.testing.assert_close(got_r, want_r)
    torch.testing.assert_close(got_f, want_f)
    for metric in (got_p, got_r, got_f):
        assert ((metric >= 0) & (metric <= 1)).all()
    # A harmonic mean lies between the two numbers it averages.
    both = got_p + got_r > 0
    assert (got_f[both] >= torch.minimum(got_p, got_r)[both] - 1e-6).all()
    assert (got_f[both] <= torch.maximum(got_p, got_r)[both] + 1e-6).all()


@settings(max_examples=150, deadline=None)
@given(labelled_samples())
def test_micro_f1_equals_accuracy_for_single_label_classification(sample):
    y_true, y_pred, k = sample
    assert micro_f1(confusion_matrix(y_true, y_pred, k)) == pytest.approx(accuracy(y_true, y_pred))


@settings(max_examples=100, deadline=None)
@given(labelled_samples(), st.randoms(use_true_random=False))
def test_the_order_of_samples_does_not_matter_and_renaming_classes_permutes_rows_and_columns(sample, rng):
    y_true, y_pred, k = sample
    confusion = confusion_matrix(y_true, y_pred, k)
    order = list(range(len(y_true)))
    rng.shuffle(order)
    shuffled = confusion_matrix([y_true[i] for i in order], [y_pred[i] for i in order], k)
    assert torch.equal(shuffled, confusion)
    renaming = list(range(k))
    rng.shuffle(renaming)  # class c is called renaming[c]
    renamed = confusion_matrix([renaming[t] for t in y_true], [renaming[p] for p in y_pred], k)
    renaming = torch.tensor(renaming)
    assert torch.equal(renamed[renaming][:, renaming], confusion)  # C[i, j] is now at [new i, new j]


@settings(max_examples=100, deadline=None)
@given(labelled_samples())
def test_macro_average_is_the_plain_mean_over_all_classes(sample):
    y_true, y_pred, k = sample
    f1 = f1_score(confusion_matrix(y_true, y_pred, k))
    assert macro_average(f1) == pytest.approx(sum(f1.tolist()) / k)


# --- Bad input gets a message that says what is wrong ---------------------------------------------------


@pytest.mark.parametrize("y_true, y_pred, num_classes, error, message", [
    ([0, 1, 2], [0, 1], 3, ValueError, "y_true has 3 labels but y_pred has 2"),
    ([0, 1, 3], [0, 1, 2], 3, ValueError, r"y_true holds the label 3, outside 0\.\.2 \(num_classes=3\)"),
    ([0, 1, 2], [0, -1, 2], 3, ValueError, r"y_pred holds the label -1, outside 0\.\.2"),
    ([0, 1], torch.randn(2, 3), 3, ValueError, r"got shape \(2, 3\): .*take \.argmax\(dim=1\) first"),
    # A column of labels is not scores: its argmax would be all zeros, so the hint is squeeze.
    (torch.tensor([[0], [1]]), [0, 1], 3, ValueError,
     r"got shape \(2, 1\): it looks like a column of labels; take \.squeeze\(1\) \(or \.flatten\(\)\) first"),
    ([0, 1], torch.tensor([0.0, 1.0]), 3, TypeError, "must hold integer class indices, got dtype torch.float32"),
    ([0, 1], ["cat", "dog"], 3, TypeError, "y_pred must be a 1-D tensor or sequence of class indices"),
    ([0, 1], [0, 1], 0, ValueError, "num_classes must be a positive integer, got 0"),
    ([0, 1], [0, 1], np.int64(0), ValueError, "num_classes must be a positive integer, got 0"),
    ([0, 1], [0, 1], 3.0, TypeError, r"num_classes must be a positive integer, got 3\.0 \(float\)"),
    ([0, 1], [0, 1], torch.tensor(3.0), TypeError, "num_classes must be a positive integer"),
    ([0, 1], [0, 1], True, TypeError, r"num_classes must be a positive integer, got True \(bool\)"),
    ([0, 1], [0, 1], torch.tensor(True), TypeError, "num_classes must be a positive integer"),
])
def test_bad_labels(y_true, y_pred, num_classes, error, message):
    with pytest.raises(error, match=message):
        confusion_matrix(y_true, y_pred, num_classes)


@pytest.mark.parametrize("num_classes", [3, np.int64(3), np.int32(3), torch.tensor(3)],
                         ids=["int", "numpy int64", "numpy int32", "0-d tensor"])
def test_num_classes_may_be_any_integer_type(num_classes):
    confusion = confusion_matrix(Y_TRUE, Y_PRED, num_classes)
    assert confusion.tolist() == CONFUSION
    with pytest.raises(ValueError, match=r"label 3, outside 0\.\.2 \(num_classes=3\)"):
        confusion_matrix([0, 3], [0, 1], num_classes)


def test_accuracy_of_nothing_and_of_mismatched_lengths():
    with pytest.raises(ValueError, match="the accuracy of no samples is undefined"):
        accuracy([], [])
    with pytest.raises(ValueError, match="y_true has 2 labels but y_pred has 1"):
        accuracy([0, 1], [0])


@pytest.mark.parametrize("confusion, message", [
    (torch.zeros(3, 2), r"square, \(K, K\) for K classes, got shape \(3, 2\)"),
    (torch.zeros(4), r"got shape \(4,\)"),
    (torch.tensor([[1, -1], [0, 2]]), "never negative"),
    (torch.tensor([[1.0, float("nan")], [0.0, 2.0]]), "finite"),
])
def test_bad_confusion_matrices(confusion, message):
    for metric in (precision, recall, f1_score, micro_f1):
        with pytest.raises(ValueError, match=message):
            metric(confusion)


def test_macro_average_refuses_nan_and_wrong_shapes():
    with pytest.raises(ValueError, match="contain NaN: define the metric .* as 0"):
        macro_average(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match=r"shape \(K,\), got shape \(2, 2\)"):
        macro_average(torch.ones(2, 2))


def test_micro_f1_of_an_empty_matrix():
    with pytest.raises(ValueError, match="counts no samples"):
        micro_f1(torch.zeros(3, 3))


# --- Predictions of a model, and the pictures ------------------------------------------------------------


def _tiny_problem():
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(10, 3, 32, 32, generator=gen)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 3), nn.Dropout(0.5))
    return images, labels, model


def test_collect_predictions_keeps_the_order_and_restores_the_mode():
    images, labels, model = _tiny_problem()
    model.train()
    predictions = collect_predictions(model, DataLoader(TensorDataset(images, labels), batch_size=4), "cpu")
    assert model.training
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(predictions.logits, model(images))  # eval mode: dropout was off
    assert torch.equal(predictions.targets, labels)
    assert torch.equal(predictions.predicted, model(images).argmax(dim=1))
    assert not predictions.logits.requires_grad


def test_collect_predictions_wants_scores_per_class():
    images, labels, _ = _tiny_problem()
    loader = DataLoader(TensorDataset(images, labels), batch_size=4)
    with pytest.raises(ValueError, match=r"scores of shape \(batch, classes\), got \(4, 3, 32, 32\)"):
        collect_predictions(nn.Identity(), loader, "cpu")
    with pytest.raises(ValueError, match="the loader gave no batches"):
        collect_predictions(nn.Identity(), [], "cpu")


def test_plot_confusion_matrix_writes_every_count():
    figure = plot_confusion_matrix(torch.tensor(CONFUSION), ["cat", "dog", "frog"])
    texts = sorted(t.get_text() for t in figure.axes[0].texts)
    assert texts == sorted(str(v) for row in CONFUSION for v in row)
    with pytest.raises(ValueError, match="2 class names for a 3x3 confusion matrix"):
        plot_confusion_matrix(torch.tensor(CONFUSION), ["cat", "dog"])
    # Names, as classification_report wants: not a string of letters, not indices.
    with pytest.raises(TypeError, match="got the string 'cdf'"):
        plot_confusion_matrix(torch.tensor(CONFUSION), "cdf")
    with pytest.raises(TypeError, match="not their indices"):
        plot_confusion_matrix(torch.tensor(CONFUSION), [0, 1, 2])
    matplotlib.pyplot.close("all")


def test_plot_misclassified_shows_only_the_mistakes_titled_true_then_predicted():
    images, labels, _ = _tiny_problem()
    dataset = TensorDataset(images, labels)
    predicted = labels.clone()
    predicted[[2, 7]] = torch.tensor([0, 2])
    figure = plot_misclassified(dataset, labels, predicted, ["cat", "dog", "frog"])
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert titles == ["frog\n-> cat", "dog\n-> frog"]
    all_right = plot_misclassified(dataset, labels, labels, ["cat", "dog", "frog"])
    assert all_right.axes[0].texts[0].get_text() == "every image was classified correctly"
    matplotlib.pyplot.close("all")


def test_plot_misclassified_spreads_its_picks_over_a_dataset_stored_class_by_class():
    images = torch.zeros(30, 3, 32, 32)
    labels = torch.arange(3).repeat_interleave(10)  # 0 x 10, then 1 x 10, then 2 x 10
    wrong = (labels + 1) % 3  # every image misclassified
    figure = plot_misclassified(TensorDataset(images, labels), labels, wrong, ["cat", "dog", "frog"],
                                count=6, columns=6)
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert len(titles) == 6
    assert {title.split("\n")[0] for title in titles} == {"cat", "dog", "frog"}
    matplotlib.pyplot.close("all")


def test_plot_misclassified_notices_predictions_in_another_order():
    images, labels, _ = _tiny_problem()
    dataset = TensorDataset(images, labels)
    shuffled = labels[torch.tensor([1, 0, 2, 3, 4, 5, 6, 7, 8, 9])]
    with pytest.raises(ValueError, match="were the predictions collected over a shuffled loader"):
        plot_misclassified(dataset, shuffled, (shuffled + 1) % 3, ["cat", "dog", "frog"])
    with pytest.raises(ValueError, match="3 predictions for a dataset of 10 images"):
        plot_misclassified(dataset, labels[:3], labels[:3], ["cat", "dog", "frog"])
    matplotlib.pyplot.close("all")


# --- The chapter's exercises: right answers pass, typical wrong ones are told precisely --------------------


def test_recall_exercise():
    def right(confusion):
        confusion = confusion.double()
        rows = confusion.sum(dim=1)
        return torch.where(rows > 0, confusion.diagonal() / rows.clamp_min(1), torch.zeros_like(rows))

    def column_sums(confusion):  # that is precision
        confusion = confusion.double()
        columns = confusion.sum(dim=0)
        return torch.where(columns > 0, confusion.diagonal() / columns.clamp_min(1), torch.zeros_like(columns))

    def nan_for_empty_rows(confusion):
        return confusion.diagonal() / confusion.sum(dim=1).double()

    def integer_division(confusion):
        return (confusion.diagonal() // confusion.sum(dim=1).clamp_min(1)).float()

    assert judge_answer("evaluation.per_class_recall", right).status == PASSED
    verdict = judge_answer("evaluation.per_class_recall", column_sums)
    assert verdict.status == FAILED and "That is the precision" in verdict.message
    verdict = judge_answer("evaluation.per_class_recall", nan_for_empty_rows)
    assert verdict.status == FAILED and "has no examples" in verdict.message and "not NaN" in verdict.message
    verdict = judge_answer("evaluation.per_class_recall", integer_division)
    assert verdict.status == FAILED and "integer division" in verdict.message


def test_macro_f1_exercise():
    def right(y_true, y_pred, num_classes):
        return macro_average(f1_score(confusion_matrix(y_true, y_pred, num_classes)))

    def micro(y_true, y_pred, num_classes):
        return accuracy(y_true, y_pred)

    def weighted(y_true, y_pred, num_classes):
        confusion = confusion_matrix(y_true, y_pred, num_classes)
        support = confusion.sum(dim=1).double()
        return float((f1_score(confusion).double() * support).sum() / support.sum())

    def f1_of_macro_averages(y_true, y_pred, num_classes):
        confusion = confusion_matrix(y_true, y_pred, num_classes)
        p, r = macro_average(precision(confusion)), macro_average(recall(confusion))
        return 2 * p * r / (p + r)

    def skips_undefined_classes(y_true, y_pred, num_classes):
        confusion = confusion_matrix(y_true, y_pred, num_classes)
        defined = (confusion.sum(dim=0) > 0) & (confusion.sum(dim=1) > 0)
        return f1_score(confusion)[defined].double().mean().item()

    assert judge_answer("evaluation.macro_f1", right).status == PASSED
    for answer, phrase in [(micro, "That is the accuracy"), (weighted, "weighted by each class's number"),
                           (f1_of_macro_averages, "harmonic mean of the macro precision and the macro recall"),
                           (skips_undefined_classes, "left out")]:
        verdict = judge_answer("evaluation.macro_f1", answer)
        assert verdict.status == FAILED, answer.__name__
        assert phrase in verdict.message, (answer.__name__, verdict.message)


def test_early_stopping_exercise():
    def right(val_losses, patience):
        best, best_epoch, waited = float("inf"), 0, 0
        for epoch, loss in enumerate(val_losses, start=1):
            if loss < best:
                best, best_epoch, waited = loss, epoch, 0
            else:
                waited += 1
                if waited == patience:
                    break
        return best_epoch

    def global_minimum(val_losses, patience):
        return min(range(len(val_losses)), key=lambda i: val_losses[i]) + 1

    def zero_based(val_losses, patience):
        return right(val_losses, patience) - 1

    def stopping_epoch(val_losses, patience):
        best, waited = float("inf"), 0
        for epoch, loss in enumerate(val_losses, start=1):
            if loss < best:
                best, waited = loss, 0
            else:
                waited += 1
                if waited == patience:
                    return epoch
        return len(val_losses)

    def ties_improve(val_losses, patience):
        best, best_epoch, waited = float("inf"), 0, 0
        for epoch, loss in enumerate(val_losses, start=1):
            if loss <= best:
                best, best_epoch, waited = loss, epoch, 0
            else:
                waited += 1
                if waited == patience:
                    break
        return best_epoch

    def not_done(val_losses, patience):
        raise NotImplementedError

    assert judge_answer("evaluation.early_stopping_epoch", right).status == PASSED
    assert judge_answer("evaluation.early_stopping_epoch", not_done).status == NOT_DONE
    for answer, phrase in [(global_minimum, "lowest validation loss of the whole curve"),
                           (zero_based, "numbered from 1"),
                           (stopping_epoch, "the epoch at which training stops"),
                           (ties_improve, "equal to the best so far is not an improvement")]:
        verdict = judge_answer("evaluation.early_stopping_epoch", answer)
        assert verdict.status == FAILED, answer.__name__
        assert phrase in verdict.message, (answer.__name__, verdict.message)


# Found by mutation testing: each test below fails on a small, plausible change to the code.


def test_boolean_labels_are_refused():
    with pytest.raises(TypeError, match="y_pred must hold integer class indices, got dtype torch.bool"):
        confusion_matrix([0, 1], torch.tensor([True, False]), 2)


def test_an_empty_or_boolean_confusion_matrix_is_refused():
    with pytest.raises(ValueError, match=r"square, \(K, K\) for K classes, got shape \(0, 0\)"):
        precision(torch.zeros(0, 0))
    with pytest.raises(TypeError, match="a confusion matrix holds counts, got dtype torch.bool"):
        precision(torch.eye(2, dtype=torch.bool))


def test_macro_average_of_no_classes_is_refused():
    with pytest.raises(ValueError, match=r"one value per class, shape \(K,\), got shape \(0,\)"):
        macro_average(torch.zeros(0))


def test_classification_report_wants_one_name_per_class():
    with pytest.raises(ValueError, match="2 class names for a 3x3 confusion matrix"):
        classification_report(torch.tensor(CONFUSION), ["cat", "dog"])


def test_classification_report_wants_the_names_not_the_indices_of_the_classes():
    with pytest.raises(TypeError, match=r"class names must be strings, got 0 \(int\): pass the names of the "
                                        r"classes \(e.g. loaders.classes\), not their indices"):
        classification_report(torch.tensor(CONFUSION), [0, 1, 2])
    with pytest.raises(TypeError, match="class names must be strings, got 0 "):  # a dict gives its keys
        classification_report(torch.tensor(CONFUSION), {0: "cat", 1: "dog", 2: "frog"})


def test_classification_report_refuses_a_string_or_a_number_for_the_list_of_names():
    with pytest.raises(TypeError, match="classes must be a list of class names, got the string 'cdf': pass a "
                                        "list of 3 names"):
        classification_report(torch.tensor(CONFUSION), "cdf")
    with pytest.raises(TypeError, match="classes must be a list of class names, got int: pass a list of 3 names"):
        classification_report(torch.tensor(CONFUSION), 3)


def test_classification_report_takes_any_sequence_of_names():
    as_list = classification_report(torch.tensor(CONFUSION), ["cat", "dog", "frog"])
    assert classification_report(torch.tensor(CONFUSION), ("cat", "dog", "frog")) == as_list
    assert classification_report(torch.tensor(CONFUSION), np.array(["cat", "dog", "frog"])) == as_list


def test_collect_predictions_leaves_a_model_in_eval_mode_in_eval_mode():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()
    loader = DataLoader(TensorDataset(torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])), batch_size=2)
    collect_predictions(model, loader, "cpu")
    assert not model.training and not any(m.training for m in model.modules())


def test_collect_predictions_gives_float32_logits_whatever_the_models_dtype():
    model = nn.Linear(4, 3, dtype=torch.float64)
    loader = DataLoader(TensorDataset(torch.randn(5, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1])),
                        batch_size=2)
    assert collect_predictions(model, loader, "cpu").logits.dtype == torch.float32


def test_plot_confusion_matrix_shades_each_cell_by_its_share_of_its_row():
    figure = plot_confusion_matrix(torch.tensor(CONFUSION), ["cat", "dog", "frog"])
    ax = figure.axes[0]
    shown = torch.as_tensor(ax.images[0].get_array().data, dtype=torch.float64)
    confusion = torch.tensor(CONFUSION, dtype=torch.float64)
    torch.testing.assert_close(shown, confusion / confusion.sum(dim=1, keepdim=True))
    assert ax.images[0].get_clim() == (0, 1)
    # White text on the dark cells only: shares above one half (3/4 of "frog" predicted as frog).
    white = [t.get_text() for t in ax.texts if t.get_color() == "white"]
    assert white == ["3"]
    matplotlib.pyplot.close("all")


def _dataset():
    images = torch.zeros(6, 3, 32, 32)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    return TensorDataset(images, labels), labels


def test_plot_misclassified_refuses_a_count_below_one():
    dataset, labels = _dataset()
    with pytest.raises(ValueError, match="count must be at least 1, got 0"):
        plot_misclassified(dataset, labels, (labels + 1) % 3, ["cat", "dog", "frog"], count=0)
    matplotlib.pyplot.close("all")


def test_plot_misclassified_refuses_a_label_without_a_class_name():
    dataset, labels = _dataset()
    predicted = labels.clone()
    predicted[0] = 3
    with pytest.raises(ValueError, match=r"y_pred holds the label 3, outside 0\.\.2"):
        plot_misclassified(dataset, labels, predicted, ["cat", "dog", "frog"])
    matplotlib.pyplot.close("all")


def test_accuracy_is_computed_in_double_precision():
    from helpers.metrics import accuracy

    assert accuracy([0, 0, 1], [0, 1, 1]) == 2 / 3
    assert accuracy(list(range(10)), [0] * 10) == 0.1


def test_classification_report_puts_macro_precision_and_recall_in_their_columns():
    # Macro precision (1 + 2/3) / 2 = 0.833 differs from macro recall (1/2 + 1) / 2 = 0.75.
    lines = classification_report(torch.tensor([[1, 1], [0, 2]]), ["cat", "dog"]).splitlines()
    assert lines[-1].split() == ["macro", "average", "0.833", "0.750", "0.733", "4"]


def test_labels_of_a_small_integer_type_do_not_overflow():
    labels = torch.tensor([19, 0, 19], dtype=torch.uint8)  # 19 * 20 + 19 does not fit in a uint8
    confusion = confusion_matrix(labels, labels, num_classes=20)
    assert confusion[19, 19] == 2 and confusion[0, 0] == 1 and confusion.sum() == 3

"""Gradient descent with momentum, RMSprop, Adam and AdamW, each written from its update formula.

Introduced in the chapter "Optimizers: from gradient descent to AdamW" (book/optimizers.ipynb).

Each class is a ``torch.optim.Optimizer``: it takes parameters or parameter groups, and
``zero_grad``, ``state_dict``/``load_state_dict`` and the learning-rate schedulers of
``torch.optim.lr_scheduler`` work with it as with PyTorch's own. Only the update is ours: each
class's docstring gives its formula, with g the gradient, θ a parameter, η the learning rate and
λ the weight decay, and the class's update code follows it line by line. The state keeps PyTorch's names
(``momentum_buffer``, ``exp_avg``, ...) so that the two can be read side by side. The tests show
that 100 steps of each follow ``torch.optim``'s trajectory within 1e-6 relative, wherever the
trajectory is not chaotic (see tests/test_optimizers.py).

Also here: the chapter's two 2-D loss surfaces and the paths optimizers take on them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import matplotlib.pyplot as plt
import torch


class _FormulaOptimizer(torch.optim.Optimizer):
    """What the four optimizers share: checked hyper-parameters, and a ``step`` that calls
    ``_update`` once for every parameter that has a gradient."""

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        # Every group is checked, with the defaults filling what it leaves out; torch.optim
        # checks only the defaults, so a bad value in a group would surface as a wrong step.
        if isinstance(param_group, dict):
            self._check({**self.defaults, **param_group})
        super().add_param_group(param_group)

    def _check(self, group: dict[str, Any]) -> None:
        _check_at_least_zero(type(self).__name__, group, "lr", "weight_decay")

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One update of every parameter that has a gradient; ``closure`` recomputes the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:  # not used in this loss, or frozen: leave it alone
                    continue
                if param.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients; "
                                       "use torch.optim.SparseAdam or a dense embedding")
                self._update(param, param.grad, self.state[param], group)
        return loss

    def _update(self, param: torch.Tensor, grad: torch.Tensor, state: dict, group: dict) -> None:
        raise NotImplementedError


def _check_at_least_zero(optimizer: str, group: dict[str, Any], *names: str) -> None:
    for name in names:
        value = group[name]
        if value >= 0:  # NaN fails this test too
            continue
        if name == "lr":
            raise ValueError(f"{optimizer}: learning rate lr={value} is invalid: it must be >= 0")
        raise ValueError(f"{optimizer}: {name}={value} is invalid: it must be >= 0")


class SGD(_FormulaOptimizer):
    r"""Gradient descent, with PyTorch's momentum, dampening, Nesterov and weight decay.

    With ``momentum=0`` this is plain gradient descent, θ ← θ − η g, on whatever gradient the
    loss gave: the whole data set's (gradient descent) or a minibatch's (SGD). Otherwise, with
    μ the momentum and τ the dampening, each step does::

        g ← ∇L(θ) + λθ      (weight decay: an L2 penalty λ/2 ‖θ‖² in the loss)
        b ← g at the first step, else b ← μ b + (1 − τ) g
        d ← g + μ b  with Nesterov, else d ← b
        θ ← θ − η d

    This is PyTorch's form of momentum: η multiplies the whole buffer at every step. The
    textbook form, v ← μ v − η g; θ ← θ + v, gives the same path while η is constant and
    τ = 0.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def _check(self, group: dict[str, Any]) -> None:
        _check_at_least_zero("SGD", group, "lr", "momentum", "weight_decay")
        if group["nesterov"] and group["momentum"] <= 0:
            raise ValueError(f"SGD: nesterov=True needs a momentum > 0, got momentum={group['momentum']}")
        if group["nesterov"] and group["dampening"] != 0:
            raise ValueError(f"SGD: nesterov=True needs dampening=0, got dampening={group['dampening']} "
                             "(as in torch.optim.SGD)")

    def _update(self, param, grad, state, group):
        lr, mu, tau, wd = group["lr"], group["momentum"], group["dampening"], group["weight_decay"]
        g = grad + wd * param if wd != 0 else grad
        if mu != 0:
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = g.clone()  # the first step starts the buffer at g, undamped
            else:
                state["momentum_buffer"].mul_(mu).add_((1 - tau) * g)
            b = state["momentum_buffer"]
            g = g + mu * b if group["nesterov"] else b
        param.sub_(lr * g)


class RMSprop(_FormulaOptimizer):
    r"""RMSprop: each coordinate's step divided by a running root mean square of its gradient.

    With α the smoothing constant, ε a small number that keeps the division finite and μ the
    momentum, each step does (all operations coordinate-wise; every average starts at 0)::

        g ← ∇L(θ) + λθ
        s ← α s + (1 − α) g²                 (running mean of g²)
        centered:  ḡ ← α ḡ + (1 − α) g;  r ← √(s − ḡ²) + ε  (running std)
        otherwise: r ← √s + ε
        μ > 0:     b ← μ b + g / r;  θ ← θ − η b
        otherwise: θ ← θ − η g / r
    """

    def __init__(self, params: Iterable, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered))

    def _check(self, group: dict[str, Any]) -> None:
        _check_at_least_zero("RMSprop", group, "lr", "alpha", "eps", "weight_decay", "momentum")

    def _update(self, param, grad, state, group):
        lr, alpha, eps, wd, mu = (group[k] for k in ("lr", "alpha", "eps", "weight_decay", "momentum"))
        if not state:
            state["step"] = 0
            state["square_avg"] = torch.zeros_like(param)
            if mu > 0:
                state["momentum_buffer"] = torch.zeros_like(param)
            if group["centered"]:
                state["grad_avg"] = torch.zeros_like(param)
        state["step"] += 1  # counted as in PyTorch; RMSprop's update does not use it
        g = grad + wd * param if wd != 0 else grad
        s = state["square_avg"].mul_(alpha).add_((1 - alpha) * g * g)
        if group["centered"]:
            g_mean = state["grad_avg"].mul_(alpha).add_((1 - alpha) * g)
            r = (s - g_mean * g_mean).sqrt() + eps
        else:
            r = s.sqrt() + eps
        if mu > 0:
            b = state["momentum_buffer"].mul_(mu).add_(g / r)
            param.sub_(lr * b)
        else:
            param.sub_(lr * g / r)


def _check_betas(optimizer: str, betas: Any) -> None:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"{optimizer}: betas must be a pair (beta1, beta2), got {betas!r}")
    for i, beta in enumerate(betas):
        if not 0 <= beta < 1:
            raise ValueError(f"{optimizer}: betas[{i}]={beta} is outside [0, 1); "
                             "the usual values are (0.9, 0.999)")


class Adam(_FormulaOptimizer):
    r"""Adam, with bias correction; ``weight_decay`` is an L2 penalty.

    With β₁, β₂ the averaging constants, t the step number (1, 2, ...) and the
    averages m, v starting at 0, each step does (coordinate-wise)::

        g ← ∇L(θ) + λθ
        m ← β₁ m + (1 − β₁) g         (running mean of the gradient)
        v ← β₂ v + (1 − β₂) g²        (running mean of its square)
        m̂ ← m / (1 − β₁ᵗ)             (bias correction: m and v started at 0)
        v̂ ← v / (1 − β₂ᵗ)
        θ ← θ − η m̂ / (√v̂ + ε)
    """

    decoupled_weight_decay = False

    def __init__(self, params: Iterable, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps,
                                      weight_decay=weight_decay))

    def _check(self, group: dict[str, Any]) -> None:
        name = type(self).__name__
        _check_at_least_zero(name, group, "lr", "eps", "weight_decay")
        _check_betas(name, group["betas"])

    def _update(self, param, grad, state, group):
        lr, (beta1, beta2) = group["lr"], group["betas"]
        eps, wd = group["eps"], group["weight_decay"]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(param)
            state["exp_avg_sq"] = torch.zeros_like(param)
        state["step"] += 1
        t = state["step"]
        g = grad
        if wd != 0:
            if self.decoupled_weight_decay:
                param.mul_(1 - lr * wd)  # AdamW: decay θ directly, not via g
            else:
                g = grad + wd * param  # Adam: the penalty's gradient joins g
        m = state["exp_avg"].mul_(beta1).add_((1 - beta1) * g)
        v = state["exp_avg_sq"].mul_(beta2).add_((1 - beta2) * g * g)
        m_hat = m / (1 - beta1**t)
        v_hat = v / (1 - beta2**t)
        param.sub_(lr * m_hat / (v_hat.sqrt() + eps))


class AdamW(Adam):
    r"""AdamW: Adam with decoupled weight decay, as in ``torch.optim.AdamW``.

    The weight decay shrinks θ directly and stays out of the averages; the gradient is the
    loss's alone, taken before the decay::

        g ← ∇L(θ), with no λθ added
        θ ← (1 − η λ) θ − η m̂ / (√v̂ + ε), with m̂ and v̂ from g as in Adam
    """

    decoupled_weight_decay = True

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


# ---------------------------------------------------------------------------------------------
# Two loss surfaces in the plane, and the paths optimizers take on them.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LossSurface:
    """A loss of two parameters, where to start on it, and the window to draw."""

    name: str
    loss: Callable[[torch.Tensor], torch.Tensor]  # (..., 2) -> (...)
    start: tuple[float, float]
    minimum: tuple[float, float]
    xlim: tuple[float, float]
    ylim: tuple[float, float]


def ill_conditioned_quadratic(xy: torch.Tensor, a: float = 1.0, b: float = 20.0) -> torch.Tensor:
    """f(x, y) = (a x² + b y²) / 2: curvature a along x, b along y. xy: (..., 2) -> (...)."""
    return 0.5 * (a * xy[..., 0] ** 2 + b * xy[..., 1] ** 2)


def rosenbrock(xy: torch.Tensor) -> torch.Tensor:
    """f(x, y) = (1 − x)² + 100 (y − x²)²: a curved, narrow valley, minimum 0 at (1, 1)."""
    x, y = xy[..., 0], xy[..., 1]
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


QUADRATIC = LossSurface("ill-conditioned quadratic, (x² + 20 y²) / 2", ill_conditioned_quadratic,
                        start=(-4.0, 1.0), minimum=(0.0, 0.0), xlim=(-4.5, 1.5), ylim=(-1.5, 1.5))
ROSENBROCK = LossSurface("Rosenbrock, (1 − x)² + 100 (y − x²)²", rosenbrock,
                         start=(-1.2, 1.0), minimum=(1.0, 1.0), xlim=(-2.0, 2.0), ylim=(-0.5, 3.0))


def optimizer_path(surface: LossSurface,
                   make_optimizer: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
                   steps: int) -> torch.Tensor:
    """The points an optimizer visits on ``surface`` from its start: shape (k + 1, 2), k <= steps.

    The path stops early when it leaves the finite numbers or goes far off the drawing (a
    diverging learning rate), so that what is returned can always be drawn.
    """
    xy = torch.tensor(surface.start, dtype=torch.float64, requires_grad=True)
    optimizer = make_optimizer([xy])
    points = [xy.detach().clone()]
    for _ in range(steps):
        optimizer.zero_grad()
        surface.loss(xy).backward()
        optimizer.step()
        point = xy.detach().clone()
        points.append(point)
        if not torch.isfinite(point).all() or point.abs().max() > 1e6:
            break
    return torch.stack(points)


def draw_paths(surface: LossSurface, paths: dict[str, torch.Tensor], ax=None):
    """Contours of ``surface`` (log-spaced levels) with each path drawn over them; returns ``ax``.

    The legend gives each path's final loss, or says that it diverged.
    """
    ax = ax if ax is not None else plt.gca()
    xs = torch.linspace(*surface.xlim, 300, dtype=torch.float64)
    ys = torch.linspace(*surface.ylim, 300, dtype=torch.float64)
    grid_x, grid_y = torch.meshgrid(xs, ys, indexing="xy")
    values = surface.loss(torch.stack([grid_x, grid_y], dim=-1))
    levels = torch.logspace(-2, math.log10(values.max().item()), 12).tolist()
    # Aliased contour lines: they look the same at this size and halve the size of the PNG.
    ax.contour(grid_x.numpy(), grid_y.numpy(), values.numpy(), levels=levels, colors="0.8", linewidths=0.7,
               antialiased=False)
    ax.plot(*surface.minimum, marker="*", color="black", markersize=12, linestyle="none", zorder=10)
    for i, (label, path) in enumerate(paths.items()):
        final = surface.loss(path[-1]).item()
        diverged = not math.isfinite(final) or final > values.max().item()
        note = "diverged" if diverged else f"final loss {final:.2g}"
        # Each path is drawn thinner than the one before, so that paths that run together
        # stay visible as nested lines.
        (line,) = ax.plot(path[:, 0].numpy(), path[:, 1].numpy(), marker=".", markersize=3,
                          linewidth=0.8 + 0.6 * (len(paths) - 1 - i), label=f"{label} ({note})")
        # A large dot where the path ends, to find each optimizer even where paths overlap.
        ax.plot(*path[-1].tolist(), marker="o", markersize=8, color=line.get_color(), markeredgecolor="black",
                linestyle="none", zorder=9)
    ax.set_xlim(*surface.xlim)
    ax.set_ylim(*surface.ylim)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title(surface.name)
    ax.legend(fontsize=10, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    return ax


# The settings of the chapter's figure, one set per surface: the learning rate of the three
# gradient-descent methods, the (much larger) one of RMSprop and Adam, whose steps are measured
# in units of the parameters rather than of the gradient, and the number of steps.
PATH_SETTINGS = {
    "quadratic": dict(surface=QUADRATIC, lr=0.06, adaptive_lr=0.1, momentum=0.7,
                      betas=(0.9, 0.999), steps=100),
    "Rosenbrock": dict(surface=ROSENBROCK, lr=1e-3, adaptive_lr=0.05, momentum=0.9,
                       betas=(0.9, 0.999), steps=500),
}


def compare_on_surface(surface: LossSurface, lr: float, adaptive_lr: float, momentum: float,
                       betas: tuple[float, float], steps: int, ax=None):
    """Draw the paths of gradient descent, momentum, Nesterov (learning rate ``lr``), RMSprop
    and Adam (``adaptive_lr``) on ``surface``, all from its start; returns ``ax``."""
    optimizers = {
        "gradient descent": lambda p: SGD(p, lr=lr),
        f"momentum {momentum:g}": lambda p: SGD(p, lr=lr, momentum=momentum),
        f"Nesterov {momentum:g}": lambda p: SGD(p, lr=lr, momentum=momentum, nesterov=True),
        "RMSprop": lambda p: RMSprop(p, lr=adaptive_lr),
        f"Adam {betas[0]:g}, {betas[1]:g}": lambda p: Adam(p, lr=adaptive_lr, betas=betas),
    }
    paths = {label: optimizer_path(surface, make, steps) for label, make in optimizers.items()}
    return draw_paths(surface, paths, ax=ax)


def optimizer_panel():
    """An ipywidgets panel that redraws ``compare_on_surface`` as its controls change.

    Choosing a surface resets the controls to its ``PATH_SETTINGS``. The controls are in the
    panel's ``controls`` dict. It needs a live Jupyter or Colab front end to be interactive.
    """
    import ipywidgets as widgets  # only the panel needs it: imported here, not with the module

    first = next(iter(PATH_SETTINGS))
    slider = dict(continuous_update=False, readout_format=".3g", style={"description_width": "9em"})
    controls = {
        "surface": widgets.Dropdown(options=list(PATH_SETTINGS), value=first, description="surface",
                                    style=slider["style"]),
        "lr": widgets.FloatLogSlider(base=10, min=-4, max=0, step=0.05,
                                     description="lr (GD, momentum)", **slider),
        "adaptive_lr": widgets.FloatLogSlider(base=10, min=-3, max=0, step=0.05,
                                              description="lr (RMSprop, Adam)", **slider),
        "momentum": widgets.FloatSlider(min=0.05, max=0.99, step=0.01, description="momentum", **slider),
        "beta1": widgets.FloatSlider(min=0.0, max=0.99, step=0.01, description="Adam beta1", **slider),
        "beta2": widgets.FloatSlider(min=0.5, max=0.9999, step=0.0001, description="Adam beta2",
                                     **{**slider, "readout_format": ".4f"}),
    }
    output = widgets.Output()
    resetting = False  # while the dropdown resets the sliders, each change must not redraw

    def redraw(_change=None):
        if resetting:
            return
        values = {name: control.value for name, control in controls.items()}
        settings = PATH_SETTINGS[values["surface"]]
        with output:
            output.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(6.5, 6), dpi=80)  # beside the sliders, on a laptop
            compare_on_surface(settings["surface"], values["lr"], values["adaptive_lr"], values["momentum"],
                               (values["beta1"], values["beta2"]), settings["steps"], ax=ax)
            plt.show()
            plt.close(fig)

    def reset(change):
        nonlocal resetting
        settings = PATH_SETTINGS[change["new"]]
        resetting = True
        for name in ("lr", "adaptive_lr", "momentum"):
            controls[name].value = settings[name]
        controls["beta1"].value, controls["beta2"].value = settings["betas"]
        resetting = False
        redraw()

    controls["surface"].observe(reset, names="value")
    for name, control in controls.items():
        if name != "surface":
            control.observe(redraw, names="value")
    reset({"new": first})
    panel = widgets.HBox([widgets.VBox(list(controls.values())), output])
    panel.controls = controls
    return panel

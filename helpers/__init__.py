"""Code for the course *Training and evaluating models with PyTorch*.

Each module is introduced by one chapter of the book, and its docstring names it.
Import the module you need, e.g. ``from helpers.runtime import pick_device``.
"""

__version__ = "0.1.0"

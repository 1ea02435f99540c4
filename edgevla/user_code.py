"""Code the user names as ``package.module:callable`` (a policy factory, a simulator's env factory)."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Callable

from .errors import EdgevlaError


def import_callable(ref: str, what: str) -> Callable[..., Any]:
    """The callable ``ref`` (``module:attr``) names; ``what`` starts every error (``policy 'x:y'``)."""
    module_name, sep, attr = str(ref).strip().partition(":")
    if not sep or not module_name or not attr:
        raise EdgevlaError(f"{what}: expected package.module:callable")
    # Like uvicorn and flask, find the user's module in the working directory too;
    # appended, so an installed package of the same name still wins.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise EdgevlaError(f"{what}: cannot import {module_name!r} ({e})") from None
    found = getattr(module, attr, None)
    if not callable(found):
        raise EdgevlaError(f"{what}: {module_name} has no callable {attr!r}")
    return found


def call_user(fn: Callable[..., Any], what: str, *args: Any) -> Any:
    """``fn(*args)``, any exception of the user's code said in one line."""
    try:
        return fn(*args)
    except EdgevlaError:
        raise
    except Exception as e:  # user code: report, don't crash
        raise EdgevlaError(f"{what} raised {type(e).__name__}: {e}") from None

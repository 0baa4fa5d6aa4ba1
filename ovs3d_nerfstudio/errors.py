"""User-facing errors: bad data, labels or teachers print one clear message, not a traceback.

nerfstudio's ``ns-*`` commands are not ours to wrap, so :func:`install_excepthook` replaces
``sys.excepthook`` when an ovs3d command starts (``process.py`` says where), and sees every
exception that command does not catch. Exceptions that derive from :class:`UserFacingError`
are printed as their message alone; everything else keeps Python's normal traceback.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Optional, Type


class UserFacingError(Exception):
    """An error whose message already says what is wrong and how to fix it."""


class ConfigError(UserFacingError, ValueError):
    """An option has a value that cannot work; the message names the flag and what it accepts."""


def print_user_errors(
    exc_type: Type[BaseException], exc: BaseException, traceback: Optional[TracebackType], fallback=sys.excepthook
) -> None:
    if isinstance(exc, UserFacingError):
        print(f"ovs3d: error: {exc}", file=sys.stderr)
        return
    fallback(exc_type, exc, traceback)


def install_excepthook() -> None:
    if sys.excepthook is not print_user_errors:
        sys.excepthook = print_user_errors

"""Holding a thread at one line of a function, without timing: the one way to keep a step that
runs in a thread (a write, a close) in progress while a test cancels its caller."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

_Tracer = Callable[[FrameType, str, Any], Any]


class HeldInThread:
    """While installed (`with`), a thread started meanwhile that runs `function` stops just before
    its first line holding `text`, sets `reached` and waits for `let_go` (set on leaving too);
    `raised` collects what `function` raised. A trace function: it sees threads started after
    it is installed alone."""

    def __init__(self, function: Callable[..., Any], text: str) -> None:
        self.reached = threading.Event()
        self.let_go = threading.Event()
        self.raised: list[BaseException] = []
        self._code = function.__code__
        lines, first = inspect.getsourcelines(function)
        self._line = first + next(i for i, line in enumerate(lines) if text in line)

    def __enter__(self) -> HeldInThread:
        threading.settrace(self._calls)
        return self

    def __exit__(self, *exc: object) -> None:
        threading.settrace(None)  # type: ignore[arg-type]
        self.let_go.set()

    def _calls(self, frame: FrameType, event: str, arg: Any) -> _Tracer | None:
        return self._in_function if event == "call" and frame.f_code is self._code else None

    def _in_function(self, frame: FrameType, event: str, arg: Any) -> _Tracer:
        if event == "line" and frame.f_lineno == self._line and not self.reached.is_set():
            self.reached.set()
            self.let_go.wait(60)
        elif event == "exception":
            self.raised.append(arg[1])
        return self._in_function

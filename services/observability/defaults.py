"""The middleware every broker runs before a project's own: Leveret's tracing.

Here, not in `leveret.services.broker`, so that the broker knows middleware only through
`MiddlewareChain`; what observability Leveret adds by default is decided in this package.
"""

from __future__ import annotations

from collections.abc import Iterable

from leveret.services.middleware import Middleware, MiddlewareChain
from leveret.services.observability.tracing import TracingMiddleware


def standard_chain(middleware: Iterable[Middleware] = ()) -> MiddlewareChain:
    """A broker's chain: Leveret's own tracing first, then `middleware` in the order given.

    Tracing comes first so that its spans enclose every other middleware's work (it does
    nothing unless OpenTelemetry is installed; see `leveret.services.observability.tracing`).

    Raises:
        InvalidArgument: An item of `middleware` is not a `Middleware` instance.
    """
    return MiddlewareChain((TracingMiddleware(), *middleware))

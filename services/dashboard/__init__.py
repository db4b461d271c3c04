"""`leveret dashboard`: the operator's web page for a Leveret namespace.

An optional extra (``pip install 'leveret[dashboard]'``: Starlette, uvicorn, Jinja2). The
application is `create_app` (an ASGI app); `leveret dashboard` serves it with uvicorn, and
`leveret.django.dashboard` mounts it in a Django project behind Django's authentication.
"""

from __future__ import annotations

from leveret.services.dashboard.app import create_app
from leveret.services.dashboard.state import Dashboard

__all__ = ["Dashboard", "create_app"]

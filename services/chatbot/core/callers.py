"""Who is asking: the API key's name of the request being served (None without keys).

The API layer sets it once a key is accepted; the admission queue reads it to share its
slots fairly between keys (core/admission.py). A context variable, so that it follows the
request through awaits and the tasks they start without being passed down every call.
"""

from __future__ import annotations

from contextvars import ContextVar

current_caller: ContextVar[str | None] = ContextVar("current_caller", default=None)

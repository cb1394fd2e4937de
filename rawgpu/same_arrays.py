"""Recognising the same arrays again, cheaply and safely.

A training step hands the same arrays (the parameters, the work buffers) to the same ops every
time. What was worked out for them the first time, the op layer's checks and the launch's argument
tuple, can be kept and found again by the arrays' ``id``s: a tuple of integers is the cheapest key
there is. But an ``id`` is only unique among objects alive at the same time, and a new array may
get a dead one's. So an entry keyed by ids is kept only while all its arrays live: a weak
reference to each has a callback that removes the entry as the array is collected, before its
``id`` can be handed out again. Nothing here keeps an array alive.
"""

from __future__ import annotations

import weakref


def ids(arrays) -> tuple:
    """The arrays' identities, for a key of :func:`keep_while_alive`."""
    return tuple(map(id, arrays))


def keep_while_alive(table: dict, key, arrays, value):
    """``table[key] = (value, ...)`` until one of ``arrays`` is collected; returns that entry.

    ``key`` must contain ``ids(arrays)``; the entry's second item holds the weak references (they
    must live as long as the entry for their callbacks to run).
    """
    drop = lambda _dead: table.pop(key, None)  # noqa: E731
    entry = table[key] = (value, [weakref.ref(arr, drop) for arr in arrays])
    return entry

"""The iteration model's component caches, shared by the models of one replica layout.

Every run (a sweep point, a benchmark size, another replica) builds its own ``IterationModel``,
and refilling its caches (layer times per token bucket, attention points, stage times) is a good
part of a short run's cost, although the values are the same: they are pure functions of the
model, the device, TP, PP, the dtypes, the per-iteration overhead and the idle fabric that
times the collectives and sends. Models built with the same ``key`` (see ``shared_caches``)
therefore share one set of dictionaries, kept for the process, least recently used dropped
beyond ``MAX_LAYOUTS``. The objects a key names by identity (the device, the cluster) are held
with it, so an identity is never reused for another object while its entry lives.
"""

from __future__ import annotations

from collections import OrderedDict

MAX_LAYOUTS = 8          # layouts kept (each holds its cluster and device alive)
CACHES = 7          # linear, embedding, head, attention, sends, all-reduces, fixed parts

_layouts: OrderedDict[tuple, tuple[tuple, tuple[dict, ...]]] = OrderedDict()


def shared_caches(key: tuple | None, anchors: tuple = ()) -> tuple[dict, ...]:
    """The component caches of the layout ``key`` (fresh ones for None). ``anchors`` are the
    objects whose ``id`` is part of the key; an entry whose anchors are other objects (an id
    reused after the first was freed cannot happen while held, but a caller may pass new
    ones) is replaced."""
    if key is None:
        return tuple({} for _ in range(CACHES))
    entry = _layouts.get(key)
    if entry is not None and len(entry[0]) == len(anchors) \
            and all(a is b for a, b in zip(entry[0], anchors)):
        _layouts.move_to_end(key)
        return entry[1]
    caches = tuple({} for _ in range(CACHES))
    _layouts[key] = (anchors, caches)
    if len(_layouts) > MAX_LAYOUTS:
        _layouts.popitem(last=False)
    return caches

"""How values become history and come back: the payload converter and codecs.

The names users call, defined in :mod:`aion_green.core.payloads` (its
docstring tells the whole story)::

    import aion_green as aion

    aion.payloads.register(Money, to_json=..., from_json=...)   # a type of yours
    aion.payloads.configure(codec=aion.payloads.ZlibCodec(), max_bytes=1 << 20)
"""
from aion_green.core.payloads import (
    ENVELOPE,
    IPayloadCodec,
    ZlibCodec,
    configure,
    decode,
    register,
    reset,
)

__all__ = ["ENVELOPE", "IPayloadCodec", "ZlibCodec", "configure", "decode", "register", "reset"]

"""W3C Trace Context over Kafka headers: a request's `traceparent` (and `tracestate`) travel with it.

The worker records no spans of its own, so it is a pass-through participant: the headers of a
request record are copied unchanged onto every record it causes (the result, progress events and the
dead-letter copy), and a tracing backend links them to the producer's trace. A malformed
`traceparent` is dropped (the W3C rule: restart the trace rather than propagate garbage), and
`tracestate` only travels with a valid `traceparent`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
Headers = list[tuple[str, bytes]]

# version-traceid-parentid-flags; versions after 00 may append fields (W3C Trace Context §3.2.4).
_TRACEPARENT = re.compile(
    r"^(?!ff)([0-9a-f]{2})-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}(-.*)?$"
)
_MAX_TRACESTATE_BYTES = 512  # W3C: at least 512 must be propagated; more may be cut


def trace_headers(headers: Iterable[tuple[str, bytes | None]] | None) -> Headers:
    """The trace-context headers of a record, to put on the records it causes; [] when none is valid.

    `headers` is aiokafka's `ConsumerRecord.headers` (name, value) pairs. Header names are matched
    case-insensitively and sent in lower case, as W3C spells them.
    """
    found: dict[str, bytes] = {}
    for name, value in headers or ():
        key = name.lower()
        if key in (TRACEPARENT, TRACESTATE) and value is not None and key not in found:
            found[key] = bytes(value)
    parent = found.get(TRACEPARENT)
    if parent is None or not _valid_traceparent(parent):
        return []
    carried: Headers = [(TRACEPARENT, parent)]
    state = found.get(TRACESTATE)
    if state and len(state) <= _MAX_TRACESTATE_BYTES:
        carried.append((TRACESTATE, state))
    return carried


def _valid_traceparent(value: bytes) -> bool:
    try:
        text = value.decode("ascii").strip()
    except UnicodeDecodeError:
        return False
    match = _TRACEPARENT.match(text)
    if match is None:
        return False
    # Version 00 has exactly four fields; only later versions may carry more.
    return not (match.group(1) == "00" and match.group(2))

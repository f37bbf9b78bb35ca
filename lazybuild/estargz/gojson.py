"""The two pieces of Go's ``encoding/json`` output that Python's ``json`` does differently.

The TOC digest covers the exact JSON bytes, so a writer that wants to reproduce
the reference output byte for byte must quote strings the way Go does:

* ``<``, ``>`` and ``&`` become ``\\u003c``, ``\\u003e``, ``\\u0026`` (HTML-safe escaping);
* U+2028 and U+2029 become ``\\u2028`` and ``\\u2029``;
* ``\\n``, ``\\r``, ``\\t``, ``\\b``, ``\\f`` use short escapes (``\\b``/``\\f`` since Go 1.22,
  which current stargz-snapshotter releases are built with); every other control
  character is ``\\u00XX`` in lowercase hex;
* everything else, including non-ASCII text, is written as raw UTF-8;
* invalid UTF-8 (here: lone surrogates from ``surrogateescape`` decoding) becomes U+FFFD.
"""

from __future__ import annotations

import re

_SHORT_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\b": "\\b",
    "\f": "\\f",
}
_NEEDS_ESCAPE = re.compile('[\\x00-\\x1f"\\\\<>&\u2028\u2029\ud800-\udfff]')


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    short = _SHORT_ESCAPES.get(char)
    if short is not None:
        return short
    if "\ud800" <= char <= "\udfff":
        return "\ufffd"
    return f"\\u{ord(char):04x}"


def quote(text: str) -> str:
    """``text`` as a JSON string literal, exactly as Go's ``json.Marshal`` writes it."""
    if _NEEDS_ESCAPE.search(text) is None:  # the common case: nothing to escape
        return '"' + text + '"'
    return '"' + _NEEDS_ESCAPE.sub(_escape, text) + '"'

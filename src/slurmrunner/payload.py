"""A job's payload (its task list as JSON text) as it travels inside the job script. Pure.

The script defines `_PAYLOAD`, the payload's JSON text, on one line before the worker's
source; the worker reads that global and parses it (worker.py). Two forms of that line:

* plain, up to COMPRESS_ABOVE bytes of JSON: `_PAYLOAD = '<json>'`, a Python string literal,
  readable in `slurmrunner render`;
* compressed, above it (unless a sample of it shows compression would save little, as for
  random text): `_PAYLOAD = __import__("zlib").decompress(__import__("binascii")
  .a2b_base64("<base64>")).decode()` (one line), zlib then base64 (the standard alphabet:
  nothing a shell here-document or a Python string literal treats specially). The script
  decodes it itself, with two C modules of the standard library, before the worker runs: the
  worker finds the same JSON text either way and needs no code for it.

100,000 inputs of 500 bytes are ~55 MB of JSON; compressed, a few MB. The script's size is not
the only bound: the worker parses the whole JSON at job start, in the job's memory, so
runspec.fit_scripts also keeps each job's JSON within runspec.MAX_PAYLOAD_JSON_BYTES (and a
share of the job's memory), however well it compresses.
"""

from __future__ import annotations

import ast
import binascii
import zlib

#: The start of the payload line (service/web/scripts.py finds the line by it).
PAYLOAD_PREFIX = "_PAYLOAD = "
#: Payloads up to this many bytes stay plain (readable); larger ones are compressed.
COMPRESS_ABOVE = 16 * 1024
#: zlib's level: 1. Level 6 (its default) took ~3x as long for payloads ~35% smaller (43 MB
#: of typical inputs: 0.3 s -> 1.2 MB at 1, 0.9 s -> 0.8 MB at 6; random text gains little at
#: either level, for seconds). A big run is compressed while the server plans it, and the
#: server's CPU matters more than a job or two fewer.
ZLIB_LEVEL = 1
#: The sample compressed to decide: compression is used when it makes the sample at most
#: WORTH_IT of its size (base64 included).
SAMPLE_BYTES = 64 * 1024
WORTH_IT = 0.8

_DECODE_HEAD = '__import__("zlib").decompress(__import__("binascii").a2b_base64("'
_DECODE_TAIL = '")).decode()'


def encode(payload_json: str) -> str:
    """The JSON text, zlib-compressed and base64-encoded (one line, ASCII)."""
    packed = zlib.compress(payload_json.encode(), ZLIB_LEVEL)
    return binascii.b2a_base64(packed, newline=False).decode("ascii")


def decode(encoded: str | bytes) -> str:
    """encode's inverse: the JSON text back."""
    return zlib.decompress(binascii.a2b_base64(encoded)).decode()


def _worth_it(payload_json: str) -> bool:
    """Whether compression pays, judged on a sample from the middle (the tasks' inputs)."""
    mid = max(0, len(payload_json) // 2 - SAMPLE_BYTES // 2)
    sample = payload_json[mid : mid + SAMPLE_BYTES]
    return len(encode(sample)) <= WORTH_IT * len(sample)


def payload_line(payload_json: str, compress: bool | None = None) -> str:
    """The script line that defines `_PAYLOAD` as `payload_json`. `compress`: None to decide
    by size (COMPRESS_ABOVE), or force either form."""
    if compress is None:
        compress = len(payload_json) > COMPRESS_ABOVE and _worth_it(payload_json)
    if compress:
        return PAYLOAD_PREFIX + _DECODE_HEAD + encode(payload_json) + _DECODE_TAIL
    return PAYLOAD_PREFIX + repr(payload_json)


def read_payload_line(line: str) -> str:
    """The JSON text a payload line defines (either form), without running it."""
    if not line.startswith(PAYLOAD_PREFIX):
        raise ValueError("not a payload line")
    expr = line[len(PAYLOAD_PREFIX) :]
    if expr.startswith(_DECODE_HEAD) and expr.endswith(_DECODE_TAIL):
        return decode(expr[len(_DECODE_HEAD) : -len(_DECODE_TAIL)])
    value = ast.literal_eval(expr)
    if not isinstance(value, str):
        raise ValueError("the payload line does not hold a string")
    return value


def is_compressed(line: str) -> bool:
    return line.startswith(PAYLOAD_PREFIX + _DECODE_HEAD)

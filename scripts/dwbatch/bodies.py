"""Reading an answer's body without trusting its size or its compression.

The body is read as it arrives on the wire (undecoded) and decompressed here, in pieces of
at most PIECE bytes, so a small compressed answer cannot turn into gigabytes in one step:
- a JSON object or list page is read up to MAX_JSON_BYTES, an error body up to
  MAX_ERROR_BYTES (the rest is not read: the connection is closed);
- a compressed body that grows more than MAX_RATIO times (past the first RATIO_GRACE bytes)
  is refused as a decompression bomb, streamed downloads included.
Only gzip and deflate are asked for (Accept-Encoding), whatever compression modules happen to
be installed; an answer in any other encoding is refused rather than guessed at.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator

ACCEPT_ENCODING = "gzip, deflate"
MAX_JSON_BYTES = 8 * 1024 * 1024
MAX_ERROR_BYTES = 64 * 1024
MAX_RATIO = 100
RATIO_GRACE = 1024 * 1024
PIECE = 1024 * 1024
COMPRESSED_READ = 64 * 1024  # raw bytes per read of a compressed body: bounds one step


class BodyRefused(Exception):
    """The body broke one of the limits above; the words say which."""


class _Decoder:
    """Content-Encoding identity, gzip (one or more members) or deflate (zlib or raw)."""

    def __init__(self, encoding: str | None) -> None:
        name = (encoding or "").strip().lower()
        if name in ("", "identity"):
            self.kind = None
        elif name in ("gzip", "x-gzip"):
            self.kind = "gzip"
        elif name == "deflate":
            self.kind = "deflate"
        else:
            raise BodyRefused(f"the answer is compressed with {name[:40]!r}, which was not "
                              f"asked for (Accept-Encoding: {ACCEPT_ENCODING})")
        self._z = None

    @property
    def compressed(self) -> bool:
        return self.kind is not None

    def _new(self, first: bytes):
        if self.kind == "gzip":
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        # deflate: the standard says zlib-wrapped; some servers send raw deflate
        wrapped = len(first) >= 2 and (first[0] & 0x0f) == 8 and \
            (first[0] * 256 + first[1]) % 31 == 0
        return zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self.kind is None:
            if data:
                yield data
            return
        while data:
            if self._z is None:
                self._z = self._new(data)
            try:
                out = self._z.decompress(data, PIECE)
                if out:
                    yield out
                while self._z.unconsumed_tail:
                    out = self._z.decompress(self._z.unconsumed_tail, PIECE)
                    if out:
                        yield out
            except zlib.error as exc:
                raise BodyRefused(f"the compressed answer is corrupt ({exc})") from None
            data = b""
            if self._z.eof:  # a gzip body may hold several members, one after the other
                data = self._z.unused_data if self.kind == "gzip" else b""
                self._z = None

    def end(self) -> bytes:
        if self._z is None:
            return b""
        try:
            return self._z.flush(PIECE)
        except zlib.error as exc:
            raise BodyRefused(f"the compressed answer is corrupt ({exc})") from None


def raw_chunks(response, size: int) -> Iterator[bytes]:
    """The body as it arrives, undecoded. read1 hands back what has arrived before a break is
    reported (urllib3 2's read(n) would drop the bytes it buffered when the connection
    breaks)."""
    raw = response.raw
    read1 = getattr(raw, "read1", None)
    if read1 is None:  # urllib3 1.x
        yield from raw.stream(size, decode_content=False)
        return
    while True:
        chunk = read1(size, decode_content=False)
        if not chunk:
            return
        yield chunk


def decoded_chunks(response, *, on_wire: Callable[[int], None] | None = None,
                   size: int = PIECE) -> Iterator[bytes]:
    """The body decoded, in pieces of at most PIECE bytes; on_wire(n) is told about every n
    bytes that arrived (for a progress deadline). Raises BodyRefused for a bomb."""
    decoder = _Decoder(response.headers.get("Content-Encoding"))
    read_size = COMPRESSED_READ if decoder.compressed else size
    wire = out = 0
    for chunk in raw_chunks(response, read_size):
        wire += len(chunk)
        if on_wire is not None:
            on_wire(len(chunk))
        for piece in decoder.feed(chunk):
            out += len(piece)
            if out > RATIO_GRACE and out > wire * MAX_RATIO:
                raise BodyRefused(
                    f"the compressed answer expands more than {MAX_RATIO} times "
                    f"({wire} bytes became more than {out}): refused as a decompression bomb")
            yield piece
    last = decoder.end()
    if last:
        yield last


def read_capped(response, limit: int, *, on_wire: Callable[[int], None] | None = None
                ) -> tuple[bytes, bool]:
    """At most `limit` decoded bytes of the body, and whether there was more (not read)."""
    buf = bytearray()
    for piece in decoded_chunks(response, on_wire=on_wire, size=min(PIECE, limit + 1)):
        room = limit - len(buf)
        if len(piece) > room:
            buf += piece[:room]
            return bytes(buf), True
        buf += piece
    return bytes(buf), False

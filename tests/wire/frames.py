"""Hand-built frames, written from the byte layout in docs/architecture.md, not from encode()."""

import struct
import zlib

from fedpress import Layout

LAYOUT = Layout.from_shapes({"w": (2, 2), "b": (2,)})  # d = 6
D = LAYOUT.numel


def frame(sel, kind, sections, *, d=D, n=None, fingerprint=None, reserved=0, version=1,
          magic=b"FPRS", nsec=None, crc_delta=0):
    n = d if n is None else n
    fingerprint = LAYOUT.fingerprint() if fingerprint is None else fingerprint
    nsec = len(sections) if nsec is None else nsec
    body = struct.pack("<4sBBBBIIIB", magic, version, sel, kind, reserved, d, fingerprint, n, nsec)
    body += b"".join(struct.pack("<I", len(s)) for s in sections) + b"".join(sections)
    return body + struct.pack("<I", (zlib.crc32(body) + crc_delta) % 2**32)


def f32(*values):
    return struct.pack(f"<{len(values)}f", *values)

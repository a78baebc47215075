"""Writes the dashboard's app icons (PNG 192/512, maskable 512, favicon.ico)
into services/dashboard/static/: a hexagon cell in the dashboard's colours.
Pure standard library, so it runs anywhere: ``python scripts/make_icons.py``."""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

STATIC = Path(__file__).resolve().parent.parent / "services" / "dashboard" / "static"
BG = (7, 7, 12)
GREEN = (57, 255, 136)
MAGENTA = (255, 60, 172)


def hexagon(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    return [
        (cx + r * math.cos(math.radians(60 * i - 90)), cy + r * math.sin(math.radians(60 * i - 90)))
        for i in range(6)
    ]


def inside(poly: list[tuple[float, float]], x: float, y: float) -> bool:
    hit = False
    j = len(poly) - 1
    for i, (xi, yi) in enumerate(poly):
        xj, yj = poly[j]
        if (yi > y) != (yj > y) and x < (xj - xi) * (y - yi) / (yj - yi) + xi:
            hit = not hit
        j = i
    return hit


def render(size: int, scale: float) -> bytes:
    """RGBA rows; ``scale``: the hexagon's radius as a fraction of half the size."""
    c = size / 2
    outer = hexagon(c, c, c * scale)
    ring = hexagon(c, c, c * scale * 0.80)
    core = hexagon(c, c, c * scale * 0.42)
    rows = bytearray()
    sub = (0.25, 0.75)
    for y in range(size):
        rows.append(0)
        for x in range(size):
            acc = [0.0, 0.0, 0.0]
            for sy in sub:
                for sx in sub:
                    px, py = x + sx, y + sy
                    if inside(core, px, py):
                        col = MAGENTA
                    elif inside(ring, px, py):
                        col = BG
                    elif inside(outer, px, py):
                        col = GREEN
                    else:
                        col = BG
                    for k in range(3):
                        acc[k] += col[k] / 4
            rows.extend((round(acc[0]), round(acc[1]), round(acc[2]), 255))
    return bytes(rows)


def png(size: int, scale: float) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    head = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)
    raw = render(size, scale)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", head)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def ico(png_bytes: bytes, size: int) -> bytes:
    """An .ico holding one PNG image (every current browser reads these)."""
    header = struct.pack("<HHH", 0, 1, 1)
    entry = struct.pack("<BBBBHHII", size, size, 0, 0, 1, 32, len(png_bytes), 6 + 16)
    return header + entry + png_bytes


def main() -> None:
    (STATIC / "icon-192.png").write_bytes(png(192, 0.92))
    (STATIC / "icon-512.png").write_bytes(png(512, 0.92))
    # maskable: the launcher may crop to a circle of 80%: keep the cell inside
    (STATIC / "icon-maskable-512.png").write_bytes(png(512, 0.70))
    (STATIC / "favicon.ico").write_bytes(ico(png(32, 0.95), 32))


if __name__ == "__main__":
    main()

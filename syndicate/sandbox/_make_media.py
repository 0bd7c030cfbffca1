"""Regenerate the sample images in ``media/`` with nothing but the standard library.

The images are committed; this script only exists so anyone can see (and reproduce) how they were made without
Pillow. Run it with ``python -m syndicate.sandbox._make_media``. Output is deterministic.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from pathlib import Path

MEDIA_DIR = Path(__file__).with_name("media")

RGB = tuple[int, int, int]
Painter = Callable[[int, int], RGB]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(width: int, height: int, paint: Painter) -> bytes:
    """Encode an 8-bit RGB PNG; every row uses the Sub filter so flat areas compress to almost nothing."""
    rows = bytearray()
    for y in range(height):
        rows.append(1)  # filter type Sub
        prev = (0, 0, 0)
        for x in range(width):
            px = paint(x, y)
            rows.extend(((px[0] - prev[0]) & 0xFF, (px[1] - prev[1]) & 0xFF, (px[2] - prev[2]) & 0xFF))
            prev = px
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(bytes(rows), 9))
        + _png_chunk(b"IEND", b"")
    )


def _lzw(indices: bytes, min_code_size: int) -> bytes:
    """GIF-flavoured LZW (variable code width, LSB-first packing, table reset at 4096 codes)."""
    clear, end = 1 << min_code_size, (1 << min_code_size) + 1
    out = bytearray()
    bit_buf = bit_len = 0

    def emit(code: int, width: int) -> None:
        nonlocal bit_buf, bit_len
        bit_buf |= code << bit_len
        bit_len += width
        while bit_len >= 8:
            out.append(bit_buf & 0xFF)
            bit_buf >>= 8
            bit_len -= 8

    def fresh() -> dict[bytes, int]:
        return {bytes([i]): i for i in range(clear)}

    table, next_code, width = fresh(), end + 1, min_code_size + 1
    emit(clear, width)
    current = b""
    for value in indices:
        candidate = current + bytes([value])
        if candidate in table:
            current = candidate
            continue
        emit(table[current], width)
        if next_code < 4096:
            table[candidate] = next_code
            next_code += 1
            if next_code > (1 << width) and width < 12:
                width += 1
        else:
            emit(clear, width)
            table, next_code, width = fresh(), end + 1, min_code_size + 1
        current = bytes([value])
    if current:
        emit(table[current], width)
    emit(end, width)
    if bit_len:
        out.append(bit_buf & 0xFF)
    return bytes(out)


def encode_gif(width: int, height: int, palette: list[RGB], frames: list[Callable[[int, int], int]]) -> bytes:
    """Encode a looping animated GIF; each frame paints palette indices, shown for half a second."""
    bits = max(1, (len(palette) - 1).bit_length())
    table = palette + [(0, 0, 0)] * ((1 << bits) - len(palette))
    out = bytearray(b"GIF89a")
    out += struct.pack("<HHBBB", width, height, 0x80 | 0x70 | (bits - 1), 0, 0)
    out += b"".join(bytes(c) for c in table)
    out += b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"  # loop forever
    min_code_size = max(2, bits)
    for paint in frames:
        out += b"\x21\xf9\x04\x00" + struct.pack("<H", 50) + b"\x00\x00"  # 50 cs delay
        out += b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0)
        data = _lzw(bytes(paint(x, y) for y in range(height) for x in range(width)), min_code_size)
        out.append(min_code_size)
        for i in range(0, len(data), 255):
            block = data[i : i + 255]
            out += bytes([len(block)]) + block
        out.append(0)
    out.append(0x3B)
    return bytes(out)


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return (round(a[0] + (b[0] - a[0]) * t), round(a[1] + (b[1] - a[1]) * t), round(a[2] + (b[2] - a[2]) * t))


def _story_card(width: int, height: int, top: RGB, bottom: RGB, accent: RGB) -> Painter:
    """A fake news card: gradient, a masthead band, a disc 'photo' and grey headline bars."""
    cx, cy, r = width * 0.72, height * 0.55, min(width, height) * 0.22
    bar_h = max(6, height // 24)
    bars = [(height * 0.45 + i * bar_h * 2, width * (0.45 - 0.08 * i)) for i in range(3)]

    def paint(x: int, y: int) -> RGB:
        if y < height // 9:
            return accent
        if (x - cx) ** 2 + (y - cy) ** 2 <= r * r:
            return _mix(accent, (255, 255, 255), 0.35)
        for bar_y, bar_w in bars:
            if bar_y <= y < bar_y + bar_h and width * 0.06 <= x < width * 0.06 + bar_w:
                return (235, 235, 235)
        return _mix(top, bottom, y / (height - 1))

    return paint


def main() -> None:
    MEDIA_DIR.mkdir(exist_ok=True)
    pngs = {
        "story-blue-640x360.png": (640, 360, (24, 64, 140), (8, 24, 60), (230, 70, 40)),
        "story-amber-1200x675.png": (1200, 675, (250, 180, 60), (170, 80, 20), (30, 30, 30)),
        "story-green-800x800.png": (800, 800, (40, 140, 90), (10, 50, 35), (250, 240, 200)),
    }
    for name, (w, h, top, bottom, accent) in pngs.items():
        (MEDIA_DIR / name).write_bytes(encode_png(w, h, _story_card(w, h, top, bottom, accent)))

    palette: list[RGB] = [(20, 20, 20), (200, 30, 30), (250, 250, 250), (120, 120, 120)]
    w, h = 320, 180

    def frame(phase: int) -> Callable[[int, int], int]:
        def paint(x: int, y: int) -> int:
            if y < 40:
                return 1  # red "BREAKING" band
            if 60 <= y < 72 and 20 <= x < 20 + 90 * (phase + 1):
                return 2  # ticker growing frame by frame
            return 3 if (x // 20 + y // 20 + phase) % 2 == 0 and y > 100 else 0

        return paint

    (MEDIA_DIR / "breaking-320x180.gif").write_bytes(encode_gif(w, h, palette, [frame(i) for i in range(3)]))


if __name__ == "__main__":
    main()

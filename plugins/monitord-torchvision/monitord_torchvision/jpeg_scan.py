"""Checking a JPEG's structure from its markers, without decoding a pixel.

``model.decode_on_device`` decodes JPEGs in batches on the model's device, inside the
model's thread, where one image the decoder refuses would take the whole batch with it.
So each JPEG is checked in the decode threads first, marker by marker (tables, frame,
scans, the end-of-image marker), for what libjpeg treats as fatal. A JPEG that passes
decodes (libjpeg only warns about damaged entropy-coded data, and decodes it anyway);
one that does not is handed back to the core's Pillow decoder, which refuses it with
its own reason when it really is broken. The check costs a few microseconds: it reads
the headers and lets a regular expression run over the compressed data.

Only what the device decoder takes is accepted: 8-bit baseline, extended or progressive
Huffman-coded JPEGs with one (gray) or three (colour) components. Arithmetic coding,
lossless, hierarchical, 12-bit and CMYK files are valid JPEGs that go the Pillow way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: SOF markers we accept: baseline, extended sequential and progressive, Huffman-coded.
_SOF_SEQUENTIAL = (0xC0, 0xC1)
_SOF_PROGRESSIVE = 0xC2
_SOI, _EOI, _SOS, _DHT, _DQT, _DRI = 0xD8, 0xD9, 0xDA, 0xC4, 0xDB, 0xDD
_COM = 0xFE
_TEM = 0x01
#: Inside entropy-coded data 0xFF is followed by 0x00 (a stuffed byte) or a restart
#: marker (0xD0-0xD7); anything else starts the next marker (0xFF: fill bytes before
#: it). A pattern that starts with one literal byte lets ``re`` skip ahead fast.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7]")


class NotPlainJpeg(ValueError):
    """The bytes are not a JPEG the device decoder is sure to take; the message says why."""


@dataclass(frozen=True)
class JpegLayout:
    """What the markers say about a JPEG that passed the check."""

    width: int
    height: int
    #: 1 (gray) or 3 (colour).
    components: int
    progressive: bool
    scans: int


@dataclass
class _Frame:
    width: int
    height: int
    progressive: bool
    #: Component id → quantisation table id.
    quantisation: dict[int, int]
    #: Component id → horizontal × vertical sampling factor (blocks in one MCU).
    blocks: dict[int, int]


def scan_jpeg(data: bytes) -> JpegLayout:
    """The layout of ``data``, or ``NotPlainJpeg`` saying what is missing or unusual."""
    if len(data) < 4 or data[0] != 0xFF or data[1] != _SOI:
        raise NotPlainJpeg("does not start with a JPEG start-of-image marker")
    reader = _Reader(data)
    return reader.run()


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 2
        self.frame: _Frame | None = None
        self.components = 0
        self.scans = 0
        self.dc_tables: set[int] = set()
        self.ac_tables: set[int] = set()
        self.quant_tables: set[int] = set()

    def run(self) -> JpegLayout:
        data = self.data
        size = len(data)
        while True:
            if self.pos >= size:
                raise NotPlainJpeg("ends before its end-of-image marker (truncated)")
            if data[self.pos] != 0xFF:
                raise NotPlainJpeg(f"stray bytes instead of a marker at offset {self.pos}")
            while self.pos < size and data[self.pos] == 0xFF:
                self.pos += 1
            if self.pos >= size:
                raise NotPlainJpeg("ends inside a marker (truncated)")
            marker = data[self.pos]
            self.pos += 1
            if marker == _EOI:
                return self._layout()
            if 0xD0 <= marker <= 0xD7 or marker == _TEM:
                continue  # standalone markers, no segment
            segment = self._segment(marker)
            if marker in _SOF_SEQUENTIAL or marker == _SOF_PROGRESSIVE:
                self._frame(marker, segment)
            elif marker == _DHT:
                self._huffman_tables(segment)
            elif marker == _DQT:
                self._quantisation_tables(segment)
            elif marker == _DRI:
                if len(segment) != 2:
                    raise NotPlainJpeg("restart-interval segment of the wrong length")
            elif marker == _SOS:
                self._scan(segment)
                self._skip_entropy_coded_data()
            elif 0xE0 <= marker <= 0xEF or marker == _COM:
                pass  # APPn (EXIF, JFIF, ICC, ...) and comments
            elif 0xC0 <= marker <= 0xCF:
                raise NotPlainJpeg(
                    f"frame type 0x{marker:02X} (arithmetic-coded, lossless or hierarchical)"
                )
            else:
                raise NotPlainJpeg(f"marker 0x{marker:02X} that plain JPEG decoders refuse")

    def _segment(self, marker: int) -> bytes:
        data = self.data
        if self.pos + 2 > len(data):
            raise NotPlainJpeg(f"ends inside the 0x{marker:02X} segment (truncated)")
        length = (data[self.pos] << 8) | data[self.pos + 1]
        if length < 2 or self.pos + length > len(data):
            raise NotPlainJpeg(f"0x{marker:02X} segment length {length} runs past the data")
        segment = data[self.pos + 2 : self.pos + length]
        self.pos += length
        return segment

    def _frame(self, marker: int, segment: bytes) -> None:
        if self.frame is not None:
            raise NotPlainJpeg("more than one frame header")
        if len(segment) < 6:
            raise NotPlainJpeg("frame header too short")
        precision = segment[0]
        height = (segment[1] << 8) | segment[2]
        width = (segment[3] << 8) | segment[4]
        count = segment[5]
        if precision != 8:
            raise NotPlainJpeg(f"{precision}-bit samples")
        if width == 0 or height == 0:
            raise NotPlainJpeg(f"frame declares {width}x{height} pixels")
        if count not in (1, 3):
            raise NotPlainJpeg(f"{count} colour components (CMYK or unusual)")
        if len(segment) != 6 + 3 * count:
            raise NotPlainJpeg("frame header length does not match its component count")
        quantisation = {}
        blocks = {}
        for index in range(count):
            ident, sampling, table = segment[6 + 3 * index : 9 + 3 * index]
            horizontal, vertical = sampling >> 4, sampling & 0x0F
            if not (1 <= horizontal <= 4 and 1 <= vertical <= 4) or table > 3:
                raise NotPlainJpeg("bad sampling factors or quantisation table in the frame header")
            quantisation[ident] = table
            blocks[ident] = horizontal * vertical
        if len(quantisation) != count:
            raise NotPlainJpeg("repeated component ids in the frame header")
        self.frame = _Frame(width, height, marker == _SOF_PROGRESSIVE, quantisation, blocks)
        self.components = count

    def _huffman_tables(self, segment: bytes) -> None:
        at = 0
        while at < len(segment):
            if at + 17 > len(segment):
                raise NotPlainJpeg("Huffman table segment too short")
            kind, ident = segment[at] >> 4, segment[at] & 0x0F
            if kind > 1 or ident > 3:
                raise NotPlainJpeg("bad Huffman table class or id")
            counts = segment[at + 1 : at + 17]
            symbols = sum(counts)
            if symbols > 256 or at + 17 + symbols > len(segment):
                raise NotPlainJpeg("bad Huffman table code counts")
            # The canonical code must fit its lengths (the all-ones code stays unused),
            # and DC symbols are bit counts, 0 to 15: libjpeg stops on either.
            code = 0
            for length, count in enumerate(counts, start=1):
                code += count
                if count and code >= 1 << length:
                    raise NotPlainJpeg("Huffman table with more codes than its lengths allow")
                code <<= 1
            if kind == 0 and any(value > 15 for value in segment[at + 17 : at + 17 + symbols]):
                raise NotPlainJpeg("DC Huffman table with a symbol over 15")
            (self.ac_tables if kind else self.dc_tables).add(ident)
            at += 17 + symbols

    def _quantisation_tables(self, segment: bytes) -> None:
        at = 0
        while at < len(segment):
            precision, ident = segment[at] >> 4, segment[at] & 0x0F
            if precision > 1 or ident > 3:
                raise NotPlainJpeg("bad quantisation table precision or id")
            at += 1 + 64 * (precision + 1)
            if at > len(segment):
                raise NotPlainJpeg("quantisation table segment too short")
            self.quant_tables.add(ident)

    def _scan(self, segment: bytes) -> None:
        frame = self.frame
        if frame is None:
            raise NotPlainJpeg("scan before the frame header")
        if not segment:
            raise NotPlainJpeg("empty scan header")
        count = segment[0]
        if not 1 <= count <= 4 or len(segment) != 4 + 2 * count:
            raise NotPlainJpeg("scan header length does not match its component count")
        start, end, approximation = segment[-3], segment[-2], segment[-1]
        high, low = approximation >> 4, approximation & 0x0F
        if frame.progressive:
            # The rules libjpeg enforces (a violation stops its decoder).
            bad = (end != 0) if start == 0 else (start > end or end > 63 or count != 1)
            bad = bad or (high != 0 and low != high - 1) or low > 13
            if bad:
                raise NotPlainJpeg("invalid progressive scan parameters")
        elif (start, end, approximation) != (0, 63, 0):
            raise NotPlainJpeg("sequential scan with progressive parameters")
        idents = [segment[1 + 2 * index] for index in range(count)]
        if len(set(idents)) != count:
            raise NotPlainJpeg("a scan names a component twice")
        if count > 1 and sum(frame.blocks.get(ident, 0) for ident in idents) > 10:
            raise NotPlainJpeg("sampling factors too large for an interleaved scan")
        for index in range(count):
            ident, tables = segment[1 + 2 * index], segment[2 + 2 * index]
            if ident not in frame.quantisation:
                raise NotPlainJpeg(f"scan names component {ident}, which the frame lacks")
            if frame.quantisation[ident] not in self.quant_tables:
                raise NotPlainJpeg("a component's quantisation table is not defined")
            dc, ac = tables >> 4, tables & 0x0F
            needs_dc = start == 0 and high == 0
            needs_ac = not frame.progressive or start > 0
            if (needs_dc and dc not in self.dc_tables) or (needs_ac and ac not in self.ac_tables):
                raise NotPlainJpeg("a scan uses a Huffman table that is not defined")
        self.scans += 1

    def _skip_entropy_coded_data(self) -> None:
        found = _NEXT_MARKER.search(self.data, self.pos)
        if found is None:
            raise NotPlainJpeg("compressed data runs to the end without an end-of-image marker (truncated)")
        # At the marker's first 0xFF; the main loop skips fill bytes and reads it.
        self.pos = found.start()

    def _layout(self) -> JpegLayout:
        if self.frame is None or self.scans == 0:
            raise NotPlainJpeg("no frame header or no scan before the end-of-image marker")
        return JpegLayout(
            width=self.frame.width,
            height=self.frame.height,
            components=self.components,
            progressive=self.frame.progressive,
            scans=self.scans,
        )

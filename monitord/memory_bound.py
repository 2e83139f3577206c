"""The most memory a daemon process can take, as a formula of its settings.

Traffic cannot raise memory past it: every place that holds a client's bytes, or an image
made from them, is bounded by a setting. README ("Limits") states the formula in the
words of ``Term.formula``; ``benchmarks/overload.py`` computes it for the settings it
runs with and compares the peak resident memory it measures against it.

The baseline (the interpreter, the libraries and the model, having run a full batch) is
measured, not computed: it depends on the model and the machine.
"""

from __future__ import annotations

import ctypes
import platform
from dataclasses import dataclass

from monitord.builtin.folder_source import READ_DURING_CLAIM_BYTES
from monitord.settings import Settings

MiB = 1 << 20

#: Bytes a decode thread holds per pixel of the image it works on, at most: Pillow's
#: decoded image and a converted copy (4 bytes a pixel each, RGBA), an upright copy after
#: EXIF rotation (4), and the monitord-torchvision preprocessing's float32 arrays of the
#: full-size image before it is resized (32). Measured figures: benchmarks/RESULTS.md.
DECODE_BYTES_PER_PIXEL = 44

#: Bytes an open connection can hold in buffers: asyncio reads up to 256 KiB at a time,
#: and aiohttp buffers up to 128 KiB of a body before it stops reading the socket.
CONNECTION_BYTES = 384 * 1024

#: Bytes of bookkeeping per image in flight (its work item, future, prediction and answer).
ITEM_BYTES = 4 * 1024

#: Blocks from this size up get a memory mapping of their own (glibc's M_MMAP_THRESHOLD),
#: above asyncio's 256 KiB socket reads, below any request body or image worth counting.
MMAP_THRESHOLD_BYTES = 1 << 20
_M_MMAP_THRESHOLD = -3  # glibc's malloc.h


@dataclass(frozen=True)
class Term:
    """One part of the bound: what holds the memory, the formula, and its value."""

    name: str
    formula: str
    bytes: int


@dataclass(frozen=True)
class MemoryBound:
    terms: tuple[Term, ...]

    @property
    def total(self) -> int:
        return sum(term.bytes for term in self.terms)

    def describe(self) -> str:
        return "\n".join(f"{term.name}: {term.formula} = {term.bytes / MiB:.0f} MiB" for term in self.terms) + (
            f"\ntotal: {self.total / MiB:.0f} MiB")


def memory_bound(settings: Settings, *, baseline_bytes: int, input_bytes: int, connections: int) -> MemoryBound:
    """The bound for a process run with ``settings`` (with ``pipeline.workers``, each
    process has it for its own work).

    ``baseline_bytes``: resident memory once ready and after a full batch; ``input_bytes``:
    one preprocessed model input (C x H x W x 4 for float32); ``connections``: open
    client connections, at most (the server itself does not cap them).
    """
    http, pipeline, folder = settings.http, settings.pipeline, settings.folder
    batch = pipeline.max_batch_size
    terms = [Term("baseline", "baseline (measured)", baseline_bytes)]
    if "http" in settings.sources:
        terms += [
            # A body is held from its first byte to its answer (queued, decoded or not);
            # one more copy exists while one body's buffer becomes its final bytes.
            Term("request bodies", "(http.max_concurrent_requests + 1) × http.max_body_bytes",
                 (http.max_concurrent_requests + 1) * http.max_body_bytes),
            Term("connections", f"connections × {CONNECTION_BYTES // 1024} KiB", connections * CONNECTION_BYTES),
        ]
    terms += [
        Term("decoding", f"pipeline.decode_workers × pipeline.max_image_pixels × {DECODE_BYTES_PER_PIXEL} bytes",
             pipeline.decode_workers * pipeline.max_image_pixels * DECODE_BYTES_PER_PIXEL),
        # Decoded inputs: the decode threads' groups (a batch in all, at least one each),
        # the ready queue (two batches), the batch forming, the one queued, the one at the
        # model and its stacked copy.
        Term("model inputs", "(6 × pipeline.max_batch_size + pipeline.decode_workers) × input bytes",
             (6 * batch + pipeline.decode_workers) * input_bytes),
        Term("items", f"pipeline.queue_size × {ITEM_BYTES // 1024} KiB", pipeline.queue_size * ITEM_BYTES),
    ]
    if "folder" in settings.sources:
        # A batch of small files read at once and one large file; the image the folder
        # thread decodes, and its batch's inputs.
        terms += [
            Term("folder files",
                 f"min(pipeline.max_batch_size, folder.max_in_flight) × {READ_DURING_CLAIM_BYTES // MiB} MiB "
                 "+ folder.max_file_bytes",
                 min(batch, folder.max_in_flight) * READ_DURING_CLAIM_BYTES + folder.max_file_bytes),
            Term("folder decoding",
                 f"pipeline.max_image_pixels × {DECODE_BYTES_PER_PIXEL} bytes + pipeline.max_batch_size × input bytes",
                 pipeline.max_image_pixels * DECODE_BYTES_PER_PIXEL + batch * input_bytes),
        ]
    return MemoryBound(tuple(terms))


def allocate_large_blocks_by_mmap() -> bool:
    """Have glibc give each block of ``MMAP_THRESHOLD_BYTES`` or more a mapping of its own,
    returned to the system when freed; False where the C library is not glibc.

    By default glibc raises that threshold each time such a block is freed, up to 32 MiB:
    request bodies and decoded images of a few MiB then come from the heap and, once freed,
    stay resident among smaller blocks. Under 19 MB bodies that put the peak over the
    bound (benchmarks/RESULTS.md); with the threshold fixed, resident memory follows the
    memory in use.
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1

"""Arrays over HTTP and into storage: encoded as (gzipped) .npy, decoded defensively.

Bytes handed to `decode_array` may come from a browser or a bucket anyone could have written to,
so decoding never unpickles, reads the .npy header first and refuses oversized shapes before
allocating anything, and bounds gzip decompression by the size the header announces (a small
gzip bomb cannot expand into gigabytes).
"""
from __future__ import annotations

import gzip
import io
import zlib

import numpy as np

# validation lives in the science library; the wire formats here build on it
from pipeline.arrays import MAX_PIXELS_DEFAULT, ArrayError, validate_image, validate_labels

__all__ = [
    "ArrayError",
    "MAX_PIXELS_DEFAULT",
    "MAX_BYTES_DEFAULT",
    "encode_array",
    "decode_array",
    "validate_labels",
    "validate_image",
]

# Labels (H, W, 2) int32 at the pixel limit are 512 MiB; images with tens of channels at that
# size would not fit a web worker anyway.
MAX_BYTES_DEFAULT = 2 * 1024**3

_NPY_MAGIC = b"\x93NUMPY"
_GZIP_MAGIC = b"\x1f\x8b"
# Generous: real .npy headers are padded to 64/128 bytes; numpy itself caps at 10000.
_MAX_HEADER_BYTES = 16384


def encode_array(arr: np.ndarray, *, level: int = 1) -> bytes:
    """`arr` as .npy bytes, gzip-compressed. Level 1: labels compress well even at the fastest level."""
    arr = np.asarray(arr)
    if arr.dtype.hasobject:
        raise ArrayError("object arrays cannot be encoded")
    buf = io.BytesIO()
    try:
        np.save(buf, arr, allow_pickle=False)
    except ValueError as exc:
        raise ArrayError(f"cannot encode array: {exc}") from exc
    # mtime=0 keeps the encoding deterministic (same array -> same bytes, useful for caching).
    return gzip.compress(buf.getvalue(), compresslevel=level, mtime=0)


def _parse_header(head: bytes):
    """(shape, dtype, fortran_order, header_length) from the start of a .npy stream."""
    if not head.startswith(_NPY_MAGIC):
        raise ArrayError("not .npy data (bad magic)")
    fp = io.BytesIO(head)
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp, max_header_size=_MAX_HEADER_BYTES)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp, max_header_size=_MAX_HEADER_BYTES)
        else:
            raise ArrayError(f"unsupported .npy format version {version}")
    except ArrayError:
        raise
    except Exception as exc:  # numpy raises ValueError/SyntaxError/EOFError variously
        raise ArrayError(f"bad or truncated .npy header: {exc}") from None
    return tuple(int(n) for n in shape), np.dtype(dtype), bool(fortran), fp.tell()


def _check_dtype(dtype: np.dtype, allowed) -> None:
    if dtype.hasobject:
        raise ArrayError("object arrays are refused (they would need unpickling)")
    if dtype.names is not None or dtype.subdtype is not None:
        raise ArrayError(f"structured/sub-array dtype {dtype} is not supported")
    if dtype.kind not in "biuf":
        raise ArrayError(f"dtype {dtype} is not a boolean, integer or floating type")
    if allowed is not None:
        allowed_set = {np.dtype(d) for d in allowed}
        if dtype.newbyteorder("=") not in allowed_set:
            names = ", ".join(sorted(str(d) for d in allowed_set))
            raise ArrayError(f"dtype {dtype} not allowed here (allowed: {names})")


def _check_shape(shape, ndim, max_pixels, itemsize, max_bytes) -> int:
    if ndim is not None:
        wanted = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if len(shape) not in wanted:
            raise ArrayError(f"array has {len(shape)} dimensions, expected {' or '.join(map(str, wanted))}")
    if any(n < 0 for n in shape):
        raise ArrayError(f"negative dimension in shape {shape}")
    if max_pixels is not None and len(shape) >= 2:
        # Pixels are the first two (spatial) axes: (H, W), (H, W, C) and (H, W, 2) all count H*W.
        pixels = shape[0] * shape[1]
        if pixels > max_pixels:
            raise ArrayError(f"{shape[0]}x{shape[1]} = {pixels} pixels exceeds the limit of {max_pixels}")
    count = 1
    for n in shape:
        count *= n
    if max_bytes is not None and count * itemsize > max_bytes:
        raise ArrayError(f"array of shape {shape} needs {count * itemsize} bytes, over the limit of {max_bytes}")
    return count


def decode_array(
    data: bytes,
    *,
    dtypes=None,
    ndim=None,
    shape: tuple[int, ...] | None = None,
    max_pixels: int | None = MAX_PIXELS_DEFAULT,
    max_bytes: int | None = MAX_BYTES_DEFAULT,
) -> np.ndarray:
    """Decode gzip-compressed or raw .npy bytes into a writable, native-byte-order array.

    dtypes: allowed dtypes (None: any bool/int/float); ndim: an int or a collection of ints; shape: the exact
    shape expected (checked from the header, before inflating);
    max_pixels bounds shape[0] * shape[1]; max_bytes bounds the decoded array. None disables a limit.
    """
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise ArrayError(f"expected bytes, got {type(data).__name__}")
    if not data:
        raise ArrayError("empty data")

    if data.startswith(_GZIP_MAGIC):
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            head = inflater.decompress(data, _MAX_HEADER_BYTES)
        except zlib.error as exc:
            raise ArrayError(f"corrupt gzip data: {exc}") from None
        tail_input = inflater.unconsumed_tail
    elif data.startswith(_NPY_MAGIC):
        inflater = None
        head = data[: _MAX_HEADER_BYTES]
        tail_input = b""
    else:
        raise ArrayError("data is neither gzip nor .npy")

    expected = shape
    shape, dtype, fortran, header_len = _parse_header(head)
    _check_dtype(dtype, dtypes)
    if expected is not None and shape != tuple(expected):
        raise ArrayError(f"array of shape {shape} does not match the expected shape {tuple(expected)}")
    count = _check_shape(shape, ndim, max_pixels, dtype.itemsize, max_bytes)
    nbytes = count * dtype.itemsize

    if inflater is None:
        payload = memoryview(data)[header_len:]
    else:
        payload = bytearray(head[header_len:])
        try:
            # +1 so a stream longer than the header claims is detected without inflating all of it.
            payload += inflater.decompress(tail_input, max(nbytes - len(payload) + 1, 1))
            if not inflater.eof and len(payload) <= nbytes:
                # All data may be in with only the gzip trailer (CRC, size) left to check.
                payload += inflater.decompress(inflater.unconsumed_tail, 1)
        except zlib.error as exc:
            raise ArrayError(f"corrupt gzip data: {exc}") from None
        if len(payload) <= nbytes and not inflater.eof:
            raise ArrayError(
                f"truncated gzip data: header says {nbytes} bytes of array data, got {len(payload)}"
            )
        if inflater.eof and inflater.unused_data:
            raise ArrayError("trailing data after the gzip stream")
    if len(payload) < nbytes:
        raise ArrayError(f"truncated array data: header says {nbytes} bytes, got {len(payload)}")
    if len(payload) > nbytes:
        raise ArrayError(f"trailing data after array: header says {nbytes} bytes, got {len(payload)}")

    arr = np.frombuffer(payload, dtype=dtype, count=count).reshape(shape, order="F" if fortran else "C")
    native = dtype.newbyteorder("=")
    if fortran or dtype != native or not arr.flags.writeable:
        # Callers edit arrays in place and expect C order in native byte order.
        arr = np.array(arr, dtype=native, order="C", copy=True)
    return arr

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

__all__ = [
    "ArrayError",
    "MAX_PIXELS_DEFAULT",
    "MAX_BYTES_DEFAULT",
    "encode_array",
    "decode_array",
    "validate_labels",
    "validate_image",
]

MAX_PIXELS_DEFAULT = 8192 * 8192
# Labels (H, W, 2) int32 at the pixel limit are 512 MiB; images with tens of channels at that
# size would not fit a web worker anyway.
MAX_BYTES_DEFAULT = 2 * 1024**3

_NPY_MAGIC = b"\x93NUMPY"
_GZIP_MAGIC = b"\x1f\x8b"
# Generous: real .npy headers are padded to 64/128 bytes; numpy itself caps at 10000.
_MAX_HEADER_BYTES = 16384
_INT32_MAX = np.iinfo(np.int32).max


class ArrayError(ValueError):
    """Bytes or an array that is not an acceptable image, label array or encoded array."""


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


def validate_labels(arr, *, shape=None, allow_2d: bool = False) -> np.ndarray:
    """Labels as C-contiguous int32 (H, W, 2): layer 0 whole-cell, layer 1 nuclear.

    Any integer dtype is accepted if values are in [0, int32 max]. (H, W) becomes whole-cell labels
    with an empty nuclear layer only with allow_2d. `shape`, if given, is the required (H, W).
    """
    arr = np.asarray(arr)
    if arr.dtype.kind not in "iu":
        raise ArrayError(f"labels must have an integer dtype, got {arr.dtype}")
    if arr.ndim == 2:
        if not allow_2d:
            raise ArrayError(f"labels must be (H, W, 2), got shape {arr.shape}")
        arr = np.stack([arr, np.zeros_like(arr)], axis=-1)
    elif arr.ndim != 3 or arr.shape[2] != 2:
        raise ArrayError(f"labels must be (H, W, 2) [whole-cell, nuclear], got shape {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ArrayError(f"labels have an empty spatial dimension: {arr.shape}")
    if shape is not None:
        want = tuple(int(n) for n in tuple(shape)[:2])
        if arr.shape[:2] != want:
            raise ArrayError(f"labels are {arr.shape[0]}x{arr.shape[1]}, expected {want[0]}x{want[1]}")
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0:
            raise ArrayError(f"labels must be >= 0, found {lo}")
        if hi > _INT32_MAX:
            raise ArrayError(f"label {hi} does not fit in int32")
    return np.ascontiguousarray(arr, dtype=np.int32)


_KEPT_IMAGE_DTYPES = (np.dtype(np.float32), np.dtype(np.uint8), np.dtype(np.uint16))


def validate_image(arr, *, max_pixels: int | None = MAX_PIXELS_DEFAULT) -> np.ndarray:
    """An image as (H, W, C), C >= 1, in float32, uint8 or uint16.

    (H, W) gains a channel axis. float32/uint8/uint16 are kept; bool becomes uint8; other integer
    and float types become float32 (exact for integers up to 2**24). Floats must be finite.
    """
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[:, :, np.newaxis]
    elif arr.ndim != 3:
        raise ArrayError(f"image must be (H, W) or (H, W, C), got shape {arr.shape}")
    h, w, c = arr.shape
    if h < 1 or w < 1 or c < 1:
        raise ArrayError(f"image has an empty dimension: {arr.shape}")
    if max_pixels is not None and h * w > max_pixels:
        raise ArrayError(f"{h}x{w} = {h * w} pixels exceeds the limit of {max_pixels}")
    kind = arr.dtype.kind
    if kind == "b":
        arr = arr.astype(np.uint8)
    elif kind not in "iuf":
        raise ArrayError(f"image dtype {arr.dtype} is not numeric")
    elif arr.dtype.newbyteorder("=") not in _KEPT_IMAGE_DTYPES:
        # Out-of-range float64 becomes inf here and is refused just below.
        with np.errstate(over="ignore"):
            arr = arr.astype(np.float32)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ArrayError("image contains NaN or infinite values")
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("="))

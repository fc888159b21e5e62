import gzip
import io
import pickle
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from backend.store.arrays import (
    MAX_PIXELS_DEFAULT,
    ArrayError,
    decode_array,
    encode_array,
    validate_image,
    validate_labels,
)


def npy_bytes(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def npy_header_only(shape, dtype="<f4", fortran=False) -> bytes:
    """A .npy header claiming `shape`, with no data behind it."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": dtype, "fortran_order": fortran, "shape": tuple(shape)}
    )
    return buf.getvalue()


# ---- encode / decode -----------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from([np.uint8, np.uint16, np.int32, np.int64, np.float32, np.float64, np.bool_, ">i4", ">f8"]),
        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6),
    )
)
def test_round_trip_preserves_values_dtype_and_shape(arr):
    out = decode_array(encode_array(arr), max_pixels=None)
    assert out.shape == arr.shape
    assert out.dtype == arr.dtype.newbyteorder("=")
    np.testing.assert_array_equal(out, arr)
    assert out.flags.c_contiguous and out.flags.writeable


def test_encode_is_gzip_and_deterministic():
    arr = np.zeros((256, 256, 2), np.int32)
    arr[10:50, 10:50, 0] = 7
    data = encode_array(arr)
    assert data[:2] == b"\x1f\x8b"
    assert data == encode_array(arr.copy())
    assert len(data) < arr.nbytes // 50  # labels compress very well


def test_decode_accepts_raw_npy_and_fortran_order():
    arr = np.asfortranarray(np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    out = decode_array(npy_bytes(arr))
    np.testing.assert_array_equal(out, arr)
    assert out.flags.c_contiguous and out.flags.writeable


def test_decoded_array_is_independent_writable_memory():
    data = encode_array(np.arange(10, dtype=np.int32))
    a = decode_array(data)
    a[0] = 99
    assert decode_array(data)[0] == 0


def test_object_arrays_are_refused_both_ways():
    with pytest.raises(ArrayError):
        encode_array(np.array([{"a": 1}], dtype=object))
    buf = io.BytesIO()
    np.save(buf, np.array([1, "x", None], dtype=object), allow_pickle=True)
    with pytest.raises(ArrayError, match="object"):
        decode_array(buf.getvalue())
    with pytest.raises(ArrayError, match="object"):
        decode_array(gzip.compress(buf.getvalue()))


def test_a_bare_pickle_is_not_unpickled():
    class Boom:
        def __reduce__(self):
            return (pytest.fail, ("unpickled!",))

    with pytest.raises(ArrayError):
        decode_array(pickle.dumps(Boom()))
    with pytest.raises(ArrayError):
        decode_array(gzip.compress(pickle.dumps(Boom())))


@pytest.mark.parametrize("descr", ["<U4", "|S3", "<M8[s]", "<c8", [("a", "<i4")]])
def test_non_numeric_dtypes_are_refused(descr):
    arr = np.zeros(3, dtype=np.dtype(descr))
    with pytest.raises(ArrayError):
        decode_array(npy_bytes(arr))


def test_dtype_and_ndim_restrictions():
    data = encode_array(np.zeros((4, 4), np.float64))
    with pytest.raises(ArrayError, match="not allowed"):
        decode_array(data, dtypes={np.int32, np.uint16})
    assert decode_array(data, dtypes=[np.float64]).dtype == np.float64
    # Byte order does not matter for the allowed set.
    assert decode_array(npy_bytes(np.zeros(2, ">i4")), dtypes={np.int32}).dtype == np.int32
    with pytest.raises(ArrayError, match="3"):
        decode_array(data, ndim=3)
    assert decode_array(data, ndim=(2, 3)).shape == (4, 4)


def test_huge_header_is_refused_before_allocating():
    header = npy_header_only((100_000, 100_000), "<f4")
    tracemalloc.start()
    try:
        with pytest.raises(ArrayError, match="exceeds"):
            decode_array(header)
        with pytest.raises(ArrayError, match="exceeds"):
            decode_array(gzip.compress(header))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * 1024 * 1024


def test_max_bytes_bounds_many_channel_arrays():
    header = npy_header_only((64, 64, 100_000), "<f8")  # few pixels, 3 GB of channels
    with pytest.raises(ArrayError, match="bytes"):
        decode_array(header)
    with pytest.raises(ArrayError, match="bytes"):
        decode_array(encode_array(np.zeros(1000, np.uint8)), max_bytes=999)


def test_pixel_limit_is_configurable():
    data = encode_array(np.zeros((100, 100, 2), np.int32))
    with pytest.raises(ArrayError, match="exceeds"):
        decode_array(data, max_pixels=99 * 100)
    assert decode_array(data, max_pixels=100 * 100).shape == (100, 100, 2)
    assert MAX_PIXELS_DEFAULT == 8192 * 8192


def test_gzip_bomb_is_not_inflated_past_the_announced_size():
    # A header announcing 16 bytes followed by 64 MB of zeros: compressed, this is ~60 kB.
    payload = npy_header_only((4,), "<i4") + bytes(16)
    bomb = gzip.compress(payload + bytes(64_000_000), compresslevel=6)
    tracemalloc.start()
    try:
        with pytest.raises(ArrayError, match="trailing"):
            decode_array(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 1024 * 1024


@pytest.mark.parametrize("compressed", [True, False])
def test_truncated_data_is_an_array_error(compressed):
    arr = np.random.default_rng(0).random((50, 50))
    data = encode_array(arr) if compressed else npy_bytes(arr)
    for cut in (1, 8, 40, len(data) // 2, len(data) - 1):
        with pytest.raises(ArrayError):
            decode_array(data[:cut])


def test_corrupt_and_garbage_input():
    data = bytearray(encode_array(np.arange(1000, dtype=np.int32)))
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(ArrayError):
        decode_array(bytes(data))
    for junk in (b"", b"hello", b"\x1f\x8bnot really gzip", "text"):
        with pytest.raises(ArrayError):
            decode_array(junk)


def test_trailing_bytes_after_raw_npy_are_refused():
    with pytest.raises(ArrayError, match="trailing"):
        decode_array(npy_bytes(np.zeros(3, np.uint8)) + b"extra")
    with pytest.raises(ArrayError, match="trailing"):
        decode_array(encode_array(np.zeros(3, np.uint8)) + b"extra")


# ---- validate_labels -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32, np.int64, np.uint32, np.uint64])
def test_labels_of_any_int_dtype_become_int32(dtype):
    arr = np.zeros((5, 6, 2), dtype)
    arr[1, 2, 0] = 3
    out = validate_labels(arr)
    assert out.dtype == np.int32 and out.shape == (5, 6, 2) and out[1, 2, 0] == 3


def test_labels_value_range():
    with pytest.raises(ArrayError, match=">= 0"):
        validate_labels(np.full((2, 2, 2), -1, np.int32))
    with pytest.raises(ArrayError, match="int32"):
        validate_labels(np.full((2, 2, 2), 2**31, np.int64))
    assert validate_labels(np.full((2, 2, 2), 2**31 - 1, np.uint64)).max() == 2**31 - 1


def test_labels_2d_needs_allow_2d():
    arr = np.arange(12, dtype=np.uint16).reshape(3, 4)
    with pytest.raises(ArrayError):
        validate_labels(arr)
    out = validate_labels(arr, allow_2d=True)
    assert out.shape == (3, 4, 2)
    np.testing.assert_array_equal(out[..., 0], arr)
    assert not out[..., 1].any()


@pytest.mark.parametrize(
    "arr",
    [
        np.zeros((4, 4, 3), np.int32),
        np.zeros((2, 4, 4), np.int32)[:1],
        np.zeros((4,), np.int32),
        np.zeros((1, 4, 4, 2), np.int32),
        np.zeros((4, 4, 2), np.float32),
        np.zeros((4, 4, 2), bool),
        np.zeros((0, 4, 2), np.int32),
    ],
)
def test_labels_bad_shapes_and_dtypes(arr):
    with pytest.raises(ArrayError):
        validate_labels(arr)


def test_labels_shape_must_match_when_given():
    arr = np.zeros((4, 5, 2), np.int32)
    assert validate_labels(arr, shape=(4, 5)).shape == (4, 5, 2)
    assert validate_labels(arr, shape=(4, 5, 3)).shape == (4, 5, 2)  # an image's shape works too
    with pytest.raises(ArrayError, match="expected 5x4"):
        validate_labels(arr, shape=(5, 4))


def test_labels_result_is_contiguous_copy_safe():
    arr = np.zeros((6, 8, 2), np.int32)[:, ::2]
    out = validate_labels(arr)
    assert out.flags.c_contiguous


# ---- validate_image --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.uint16])
def test_image_dtypes_kept(dtype):
    out = validate_image(np.ones((3, 4, 2), dtype))
    assert out.dtype == dtype and out.shape == (3, 4, 2)


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int16, np.int32, np.uint32])
def test_image_other_numeric_dtypes_become_float32(dtype):
    arr = np.arange(24, dtype=dtype).reshape(2, 3, 4)
    out = validate_image(arr)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, arr.astype(np.float32))


def test_image_2d_gains_channel_axis_and_bool_becomes_uint8():
    assert validate_image(np.zeros((3, 4), np.uint8)).shape == (3, 4, 1)
    out = validate_image(np.ones((3, 4, 1), bool))
    assert out.dtype == np.uint8 and out.max() == 1


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_image_non_finite_refused(bad):
    arr = np.zeros((4, 4, 2), np.float32)
    arr[2, 3, 1] = bad
    with pytest.raises(ArrayError, match="NaN"):
        validate_image(arr)


def test_image_float64_overflowing_float32_is_refused():
    with pytest.raises(ArrayError):
        validate_image(np.full((2, 2, 1), 1e300))


@pytest.mark.parametrize(
    "arr",
    [np.zeros(5), np.zeros((2, 3, 4, 5)), np.zeros((0, 3, 1)), np.zeros((3, 3, 0)), np.zeros((2, 2), complex), np.array([["a"]])],
)
def test_image_bad_shapes_and_dtypes(arr):
    with pytest.raises(ArrayError):
        validate_image(arr)


def test_image_pixel_limit():
    with pytest.raises(ArrayError, match="exceeds"):
        validate_image(np.zeros((10, 11, 1), np.uint8), max_pixels=100)
    assert validate_image(np.zeros((10, 10, 1), np.uint8), max_pixels=100).shape == (10, 10, 1)

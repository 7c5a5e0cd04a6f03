"""Tests for limsync.pipeline.blob: DataJoint's <blob> format, alone and against datajoint."""

from __future__ import annotations

import datetime
import math
import uuid
import warnings
import zlib
from decimal import Decimal
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from limsync.errors import BlobFormatError, DatabaseError
from limsync.pipeline.blob import pack, unpack

with warnings.catch_warnings():
    # datajoint warns on import that it found no datajoint.json; no database is used here.
    warnings.simplefilter("ignore", UserWarning)
    datajoint = pytest.importorskip("datajoint")

dj_blob = datajoint.blob

SUPPORTED_DTYPES = [
    np.dtype(name)
    for name in (
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float32",
        "float64",
        "complex64",
        "complex128",
    )
]
SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)
# Fixed seed: the property tests must give the same verdict on every run.
PROPERTY = settings(max_examples=150, deadline=None, derandomize=True)


def _layouts(array: np.ndarray) -> list[np.ndarray]:
    """The same logical array in C order, Fortran order and as a non-contiguous view."""
    # Flipping a flipped copy gives the original values through negative strides.
    strided = np.flip(np.flip(array).copy())
    return [np.array(array, order="C"), np.array(array, order="F"), strided]


@st.composite
def arrays(draw: st.DrawFn, finite_complex: bool = False) -> np.ndarray:
    dtype = draw(st.sampled_from(SUPPORTED_DTYPES))
    elements = None
    if finite_complex and dtype.kind == "c":
        # datajoint rebuilds complex arrays as real + 1j * imag, which turns inf into nan.
        elements = hnp.from_dtype(dtype, allow_nan=False, allow_infinity=False)
    array: np.ndarray = draw(hnp.arrays(dtype, SHAPES, elements=elements))
    return draw(st.sampled_from(_layouts(array)))


def assert_identical(actual: Any, expected: np.ndarray) -> None:
    """Same type, dtype, shape and bits (so -0.0 and NaN payloads count too)."""
    assert isinstance(actual, np.ndarray)
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    assert actual.tobytes() == expected.tobytes()


def assert_equal_values(actual: Any, expected: np.ndarray) -> None:
    """Same dtype, shape and values (NaN equal to NaN).

    datajoint reads a 0-d array back as a numpy scalar (which has a dtype and shape ``()`` too),
    so a numpy scalar is accepted where the expected array is 0-d.
    """
    assert isinstance(actual, np.ndarray) or (expected.ndim == 0 and isinstance(actual, np.generic))
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    assert np.array_equal(actual, expected, equal_nan=True)


def u64(n: int) -> bytes:
    return n.to_bytes(8, "little")


def u32(n: int) -> bytes:
    return n.to_bytes(4, "little")


# --- limsync alone ----------------------------------------------------------------------------


@PROPERTY
@given(arrays())
def test_arrays_round_trip_bit_for_bit(array: np.ndarray) -> None:
    result = unpack(pack(array))
    assert_identical(result, array)
    assert result.flags.writeable


@PROPERTY
@given(arrays())
def test_pack_does_not_depend_on_memory_layout(array: np.ndarray) -> None:
    packed = {pack(layout) for layout in _layouts(array)}
    assert len(packed) == 1
    assert pack(array) == pack(array.copy())


def test_array_layout_is_column_major_with_mym_header() -> None:
    array = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int16)
    expected = (
        b"mYm\0A"
        + u64(2)
        + u64(2)
        + u64(3)
        + u32(10)  # MATLAB's class id for int16
        + u32(0)  # not complex
        + np.array([1, 4, 2, 5, 3, 6], dtype="<i2").tobytes()
    )
    assert pack(array) == expected
    assert pack(np.asfortranarray(array)) == expected


def test_complex_arrays_store_real_parts_then_imaginary_parts() -> None:
    array = np.array([1 + 2j, 3 - 4j], dtype=np.complex64)
    expected = (
        b"mYm\0A"
        + u64(1)
        + u64(2)
        + u32(7)  # float32, the real part's class
        + u32(1)
        + np.array([1, 3, 2, -4], dtype="<f4").tobytes()
    )
    assert pack(array) == expected


def test_complex_infinities_survive() -> None:
    array = np.array([complex(1, math.inf), complex(-math.inf, 0), complex(math.nan, 2)])
    assert_identical(unpack(pack(array)), array)


@pytest.mark.parametrize("array", [np.array(2.5), np.array(True), np.array(7, dtype=np.uint16)])
def test_zero_dimensional_arrays_use_the_dj0_header(array: np.ndarray) -> None:
    packed = pack(array)
    assert packed.startswith(b"dj0\0A" + u64(0))
    assert_identical(unpack(packed), array)


@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 2, 4)])
def test_empty_arrays_keep_their_shape(shape: tuple[int, ...]) -> None:
    array = np.zeros(shape, dtype=np.float32)
    assert pack(array).startswith(b"mYm\0")
    assert_identical(unpack(pack(array)), array)


@pytest.mark.parametrize("dtype", [">i4", ">f8", ">c16", ">u2"])
def test_byte_swapped_input_is_stored_little_endian(dtype: str) -> None:
    swapped = np.arange(6, dtype=dtype).reshape(2, 3)
    native = swapped.astype(swapped.dtype.newbyteorder("="))
    assert pack(swapped) == pack(native)
    assert_identical(unpack(pack(swapped)), native)


@pytest.mark.parametrize(
    "value",
    [
        0,
        1,
        -1,
        127,
        128,
        -128,
        -129,
        2**64,
        -(2**200),
        1.5,
        -0.0,
        math.inf,
        True,
        False,
        1 + 2j,
        "",
        "héllo ✓",
        b"",
        b"\x00\xff",
        None,
    ],
    ids=repr,
)
def test_python_scalars_round_trip_with_their_type(value: object) -> None:
    packed = pack(value)
    assert packed.startswith(b"dj0\0")
    result = unpack(packed)
    assert type(result) is type(value)
    assert result == value
    if isinstance(value, float) and isinstance(result, float):  # the sign of -0.0 survives
        assert math.copysign(1, result) == math.copysign(1, value)


def test_nan_and_bytearray_round_trip() -> None:
    assert math.isnan(unpack(pack(math.nan)))
    assert unpack(pack(bytearray(b"ab"))) == b"ab"


@pytest.mark.parametrize(
    "value", [np.float64(1.5), np.float32(-2), np.int8(-3), np.uint64(2**64 - 1), np.bool_(True)]
)
def test_numpy_scalars_become_zero_dimensional_arrays(value: np.generic) -> None:
    result = unpack(pack(value))
    assert_identical(result, np.asarray(value))


def test_compression_starts_strictly_above_1000_bytes() -> None:
    # An uncompressed uint8 vector blob is 29 bytes of header and layout plus its elements.
    at_threshold = np.zeros(971, dtype=np.uint8)
    over_threshold = np.zeros(972, dtype=np.uint8)

    plain = pack(at_threshold)
    assert len(plain) == 1000
    assert plain.startswith(b"mYm\0A")

    compressed = pack(over_threshold)
    assert compressed.startswith(b"ZL123\0" + u64(1001))
    assert len(compressed) < 1001
    assert zlib.decompress(compressed[14:]).startswith(b"mYm\0A")
    assert_identical(unpack(plain), at_threshold)
    assert_identical(unpack(compressed), over_threshold)


def test_incompressible_blobs_stay_uncompressed() -> None:
    rng = np.random.default_rng(12345)
    noise = rng.integers(0, 256, size=2000, dtype=np.uint8)
    packed = pack(noise)
    assert packed.startswith(b"mYm\0A")
    assert len(packed) == 2029
    assert_identical(unpack(packed), noise)

    # The example of the DataJoint contract: 128 random doubles stay 1053 raw bytes.
    doubles = rng.random(128)
    assert len(pack(doubles)) == 1053
    assert pack(doubles).startswith(b"mYm\0A")


def test_unpack_accepts_memoryview_and_bytearray() -> None:
    array = np.arange(5, dtype=np.int32)
    packed = pack(array)
    assert_identical(unpack(memoryview(packed)), array)
    assert_identical(unpack(bytearray(packed)), array)


# --- values limsync refuses to pack ------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "mentioned"),
    [
        (np.array(["ab"]), "<U2"),
        (np.array([object()], dtype=object), "object"),
        (np.zeros(2, dtype=np.float16), "float16"),
        (np.zeros(2, dtype="datetime64[D]"), "datetime64"),
        (np.zeros(2, dtype=[("a", "i4")]), "dtype"),
        (np.ma.masked_array([1, 2], mask=[True, False]), "MaskedArray"),
        ([1, 2], "list"),
        ({"a": 1}, "dict"),
        ((1,), "tuple"),
        ({1}, "set"),
        (Decimal("1.5"), "Decimal"),
        (datetime.date(2024, 1, 1), "date"),
        (uuid.UUID(int=1), "UUID"),
        (2 ** (8 * 65535), "bits"),
        ("\ud800", "Unicode"),
    ],
    ids=lambda v: type(v).__name__,
)
def test_pack_refuses_unsupported_values_clearly(value: object, mentioned: str) -> None:
    with pytest.raises(BlobFormatError, match=mentioned) as caught:
        pack(value)
    assert isinstance(caught.value, DatabaseError)


def test_the_largest_int_datajoint_allows_still_packs() -> None:
    value = 2 ** (8 * 65535 - 2)
    assert unpack(pack(value)) == value


# --- corrupt or unsupported blobs --------------------------------------------------------------

VALID_BLOBS = [
    pack(np.arange(6, dtype=np.float64).reshape(2, 3)),
    pack(np.array([1 + 1j, 2], dtype=np.complex128)),
    pack(np.array(True)),
    pack(-(2**70)),
    pack(1.25),
    pack(1j),
    pack(False),
    pack("text"),
    pack(b"bytes"),
    pack(np.zeros(5000)),
]


@pytest.mark.parametrize("blob", VALID_BLOBS, ids=lambda b: repr(b[:6]))
def test_every_truncation_is_reported(blob: bytes) -> None:
    for end in range(len(blob)):
        with pytest.raises(BlobFormatError):
            unpack(blob[:end])


@pytest.mark.parametrize("blob", VALID_BLOBS, ids=lambda b: repr(b[:6]))
def test_trailing_bytes_are_reported(blob: bytes) -> None:
    with pytest.raises(BlobFormatError, match="unexpected bytes"):
        unpack(blob + b"\0")


def test_a_valid_blob_sample_is_compressed() -> None:
    # test_every_truncation_is_reported must cover the compression envelope too.
    assert any(blob.startswith(b"ZL123\0") for blob in VALID_BLOBS)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "not a DataJoint blob"),
        (b"\x89PNG\r\n", "not a DataJoint blob"),
        (b"mYm\0Z", "unknown structure code"),
        (b"dj0\0\x04" + u64(0), "dict"),
        (b"dj0\0\x02" + u64(0), "list"),
        (b"mYm\0S" + u64(0), "struct"),
        (b"mYm\0A" + u64(1) + u64(1) + u32(99) + u32(0) + b"\0", "unknown array class id 99"),
        (b"mYm\0A" + u64(1) + u64(2) + u32(4) + u32(0) + b"a\0b\0", "char array"),
        (b"dj0\0A" + u64(1) + u64(1) + u32(65_539) + u32(0) + u64(0), "datetime64"),
        (b"mYm\0A" + u64(1) + u64(1) + u32(6) + u32(2) + bytes(8), "complex flag"),
        (b"mYm\0A" + u64(1) + u64(1) + u32(12) + u32(1) + bytes(8), "complex int32"),
        (b"mYm\0A" + u64(1) + u64(2) + u32(3) + u32(0) + b"\x01\x02", "bool array"),
        (b"mYm\0A" + u64(1) + u64(2**40) + u32(6) + u32(0) + bytes(16), "truncated"),
        (b"mYm\0A" + u64(2**62), "truncated"),
        (b"mYm\0A" + u64(70) + u64(1) * 70 + u32(6) + u32(0) + bytes(8), "cannot be built"),
        (b"dj0\0\x0b\x02", "bool"),
        (b"dj0\0\x05" + u64(1) + b"\xff", "UTF-8"),
        (b"ZL123\0" + u64(10) + b"not zlib", "corrupt compressed"),
    ],
)
def test_corrupt_or_unsupported_blobs_are_reported(blob: bytes, message: str) -> None:
    with pytest.raises(BlobFormatError, match=message):
        unpack(blob)


@pytest.mark.parametrize("declared", [0, 4000, 4029, 2**63])
def test_a_wrong_uncompressed_length_is_reported(declared: int) -> None:
    compressed = pack(np.zeros(500))  # 4029 bytes uncompressed
    assert compressed.startswith(b"ZL123\0" + u64(4029))
    tampered = b"ZL123\0" + u64(declared) + compressed[14:]
    if declared == 4029:
        assert_identical(unpack(tampered), np.zeros(500))
    else:
        with pytest.raises(BlobFormatError, match="compressed blob"):
            unpack(tampered)


def test_a_damaged_zlib_stream_is_reported() -> None:
    compressed = bytearray(pack(np.zeros(500)))
    compressed[20] ^= 0xFF
    with pytest.raises(BlobFormatError, match="compressed blob"):
        unpack(bytes(compressed))


# --- interoperability with the real datajoint package -----------------------------------------


@PROPERTY
@given(arrays())
def test_pack_matches_datajoint_byte_for_byte(array: np.ndarray) -> None:
    assert pack(array) == dj_blob.pack(array, compress=True)


@PROPERTY
@given(arrays(finite_complex=True))
def test_datajoint_reads_what_limsync_packs(array: np.ndarray) -> None:
    assert_equal_values(dj_blob.unpack(pack(array)), array)


@PROPERTY
@given(arrays())
def test_limsync_reads_what_datajoint_packs(array: np.ndarray) -> None:
    assert_identical(unpack(dj_blob.pack(array, compress=True)), array)


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**300), max_value=2**300),
    st.floats(),
    st.complex_numbers(allow_nan=False, allow_infinity=False),
    st.text(),
    st.binary(),
)


def _same_scalar(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return type(a) is type(b) and a == b


@PROPERTY
@given(SCALARS)
def test_scalars_interoperate_with_datajoint(value: object) -> None:
    packed = pack(value)
    assert packed == dj_blob.pack(value, compress=True)
    assert _same_scalar(dj_blob.unpack(packed), value)
    assert _same_scalar(unpack(dj_blob.pack(value, compress=True)), value)


@pytest.mark.parametrize("value", [np.float64(1.5), np.int16(-4), np.bool_(False), np.uint8(3)])
def test_numpy_scalars_match_datajoint(value: np.generic) -> None:
    assert pack(value) == dj_blob.pack(value, compress=True)
    assert_identical(unpack(dj_blob.pack(value)), np.asarray(value))


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((40, 50), dtype=np.int32),
        np.tile(np.arange(300, dtype=np.float32), (4, 1)).T,
        np.zeros(972, dtype=np.uint8),
        np.zeros(971, dtype=np.uint8),
    ],
    ids=["zeros-2d", "tiled-F", "just-over-1000", "exactly-1000"],
)
def test_compression_matches_datajoint(array: np.ndarray) -> None:
    packed = pack(array)
    assert packed == dj_blob.pack(array, compress=True)
    assert_identical(unpack(dj_blob.pack(array)), array)
    assert_equal_values(dj_blob.unpack(packed), array)


def test_round_trip_through_the_blob_codec() -> None:
    codec = datajoint.codecs.get_codec("blob")
    array = np.arange(24, dtype=np.int64).reshape(2, 3, 4)
    assert_equal_values(codec.decode(pack(array)), array)
    assert_identical(unpack(codec.encode(array)), array)


@pytest.mark.parametrize(
    ("value", "mentioned"),
    [
        ({"a": 1}, "dict"),
        ([1, 2], "list"),
        ((1, 2), "tuple"),
        ({1, 2}, "set"),
        (Decimal("1.5"), "Decimal"),
        (datetime.datetime(2024, 1, 2, 3, 4), "date/time"),
        (uuid.UUID(int=7), "UUID"),
        (np.array(["ab", "c"]), "object or string array"),
        (np.array(["2024-01-01"], dtype="datetime64[D]"), "datetime64"),
        (np.zeros(2, dtype=[("a", "i4")]), "record array"),
    ],
    ids=lambda v: type(v).__name__,
)
def test_datajoint_structures_limsync_does_not_read_are_named(
    value: object, mentioned: str
) -> None:
    with pytest.raises(BlobFormatError, match=mentioned):
        unpack(dj_blob.pack(value))

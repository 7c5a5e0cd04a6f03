"""DataJoint's ``<blob>`` serialization format, written and read without DataJoint.

limsync stores numpy arrays (and a few plain scalars) in ``longblob``/``bytea`` columns that
DataJoint's ``<blob>`` codec must read as its own, and it reads blobs that DataJoint wrote. A
blob is:

* optionally a compression envelope: ``ZL123\\0``, the uncompressed length (uint64), then a zlib
  stream of everything below;
* a protocol header: ``mYm\\0`` (MATLAB-compatible) or ``dj0\\0`` (values MATLAB's mYm cannot
  hold: 0-d arrays and Python scalars);
* one value, introduced by a one-byte structure code. Numeric arrays are ``A``, the rank
  (uint64), each dimension (uint64), a MATLAB class id (uint32), a complex flag (uint32) and the
  elements in column-major order, real parts first, then imaginary parts.

Every integer in the format is little-endian. Only what LIMS metadata needs is supported;
anything else raises :class:`~limsync.errors.BlobFormatError` rather than being stored in a
form that DataJoint or limsync would read back differently. For every supported value :func:`pack`
returns exactly the bytes of ``datajoint.blob.pack(value, compress=True)`` (big-endian arrays,
which DataJoint refuses, are stored as their little-endian equivalent), and it is deterministic,
because limsync compares packed bytes to decide whether a row changed.
"""

from __future__ import annotations

import math
import struct
import sys
import zlib
from collections.abc import Callable
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from limsync.errors import BlobFormatError

__all__ = ["pack", "unpack"]

_MYM: Final = b"mYm\0"
_DJ0: Final = b"dj0\0"
_ZLIB_PREFIX: Final = b"ZL123\0"
# DataJoint only tries compression above this many bytes (header included).
_COMPRESS_ABOVE: Final = 1000

# Structure codes of the values limsync reads and writes.
_ARRAY: Final = b"A"
_NONE: Final = b"\xff"
_STR: Final = b"\x05"
_BYTES: Final = b"\x06"
_INT: Final = b"\x0a"
_BOOL: Final = b"\x0b"
_COMPLEX: Final = b"\x0c"
_FLOAT: Final = b"\x0d"

# Structure codes DataJoint may write that limsync deliberately does not read: named so that the
# error says what the blob holds instead of calling it corrupt.
_UNREAD_CODES: Final = {
    b"P": "sparse array",
    b"S": "MATLAB struct",
    b"C": "MATLAB cell array",
    b"F": "record array",
    b"\x01": "tuple",
    b"\x02": "list",
    b"\x03": "set",
    b"\x04": "dict",
    b"d": "Decimal",
    b"t": "date/time",
    b"u": "UUID",
}

# MATLAB class ids that mYm uses for numeric arrays, by numpy dtype name. A complex array is
# stored under its real part's class id with the complex flag set.
_CLASS_IDS: Final = {
    "bool": 3,
    "float64": 6,
    "float32": 7,
    "int8": 8,
    "uint8": 9,
    "int16": 10,
    "uint16": 11,
    "int32": 12,
    "uint32": 13,
    "int64": 14,
    "uint64": 15,
}
_DTYPES: Final = {class_id: np.dtype(name) for name, class_id in _CLASS_IDS.items()}
_COMPLEX_PART: Final = {"complex64": "float32", "complex128": "float64"}
_COMPLEX_OF: Final = {part: np.dtype(name) for name, part in _COMPLEX_PART.items()}
_UNREAD_CLASS_IDS: Final = {
    0: "an array of unknown class",
    1: "a MATLAB cell array",
    2: "a MATLAB struct array",
    4: "a MATLAB char array",
    5: "an object or string array",
    16: "a MATLAB function handle",
}
# DataJoint's own extension: datetime64 arrays, one class id per unit.
_DATETIME64_CLASS_IDS: Final = range(65_536, 65_549)

_SUPPORTED = (
    "numpy arrays and scalars of bool, int8..int64, uint8..uint64, float32, float64, "
    "complex64 or complex128; int, float, bool, complex, str, bytes or None"
)
_U64: Final = np.dtype("<u8")


def pack(value: object) -> bytes:
    """Serialize ``value`` in DataJoint's ``<blob>`` format, exactly as DataJoint would.

    ``value`` is a numeric numpy array (any shape, including 0-d and empty, any memory order;
    elements are stored column-major), a numpy numeric or bool scalar (stored as a 0-d array),
    or an ``int``, ``float``, ``bool``, ``complex``, ``str``, ``bytes``/``bytearray`` or ``None``.
    Blobs over 1000 bytes are zlib-compressed when that makes them smaller. The same value
    always gives the same bytes.

    Raises :class:`BlobFormatError` for any other type or dtype.
    """
    header, body = _pack_value(value)
    blob = header + body
    if len(blob) > _COMPRESS_ABOVE:
        compressed = _ZLIB_PREFIX + _u64(len(blob)) + zlib.compress(blob)
        # DataJoint keeps the compressed form only when it is actually smaller; so do we, or
        # the bytes (and so limsync's change detection) would differ from DataJoint's.
        if len(compressed) < len(blob):
            return compressed
    return blob


def unpack(data: bytes | bytearray | memoryview) -> Any:
    """Deserialize a ``<blob>`` value written by :func:`pack` or by DataJoint.

    Arrays come back as writable arrays in native byte order with their stored dtype and shape;
    Python scalars, ``str``, ``bytes`` and ``None`` come back as themselves. Raises
    :class:`BlobFormatError` if ``data`` is corrupt or truncated, or holds a structure limsync
    does not read (dicts, lists, MATLAB structs and cells, datetimes, ...).
    """
    blob = bytes(data)
    if blob.startswith(_ZLIB_PREFIX):
        blob = _decompress(blob)
    header = blob[: len(_MYM)]
    if header not in (_MYM, _DJ0):
        raise BlobFormatError(
            f"not a DataJoint blob: expected a mYm or dj0 header, found {header!r}"
        )
    reader = _Reader(blob, len(header))
    value = _read_value(reader)
    reader.expect_end()
    return value


# --- packing -------------------------------------------------------------------------------------


def _pack_value(value: object) -> tuple[bytes, bytes]:
    """Return the protocol header and the encoded value."""
    if isinstance(value, np.ndarray):
        if type(value) is not np.ndarray:
            # Masked arrays, matrices and record arrays would silently lose what makes them so.
            raise BlobFormatError(
                f"cannot pack a {type(value).__name__} (an ndarray subclass) into a DataJoint "
                "blob; convert it with numpy.asarray() first"
            )
        # MATLAB has no 0-d arrays, so DataJoint labels those dj0.
        return (_MYM if value.ndim else _DJ0), _pack_array(value)
    # Checked before the Python types: numpy.float64 is a float subclass, but DataJoint stores
    # numpy scalars as 0-d arrays so that their dtype survives.
    if isinstance(value, np.number | np.bool_):
        return _DJ0, _pack_array(np.asarray(value))
    if value is None:
        return _DJ0, _NONE
    if isinstance(value, bool):  # before int: bool is an int subclass
        return _DJ0, _BOOL + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        return _DJ0, _pack_int(value)
    if isinstance(value, float):
        return _DJ0, _FLOAT + struct.pack("<d", value)
    if isinstance(value, complex):
        return _DJ0, _COMPLEX + struct.pack("<dd", value.real, value.imag)
    if isinstance(value, str):
        try:
            encoded = value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise BlobFormatError(f"cannot pack a str that is not valid Unicode: {exc}") from exc
        return _DJ0, _STR + _u64(len(encoded)) + encoded
    if isinstance(value, bytes | bytearray):
        return _DJ0, _BYTES + _u64(len(value)) + bytes(value)
    raise BlobFormatError(
        f"cannot pack a value of type {type(value).__qualname__} into a DataJoint blob; "
        f"supported: {_SUPPORTED}"
    )


def _pack_int(value: int) -> bytes:
    # DataJoint's length rule (one byte more than the magnitude needs, room for the sign bit).
    n_bytes = value.bit_length() // 8 + 1
    if n_bytes > 0xFFFF:
        raise BlobFormatError(
            f"cannot pack an int of {value.bit_length()} bits; a DataJoint blob holds at most "
            "65535 bytes per int"
        )
    return _INT + n_bytes.to_bytes(2, "little") + value.to_bytes(n_bytes, "little", signed=True)


def _pack_array(array: npt.NDArray[Any]) -> bytes:
    name = array.dtype.name  # byte-order independent: '>f8' and '<f8' are both float64
    part_name = _COMPLEX_PART.get(name, name)
    class_id = _CLASS_IDS.get(part_name)
    if class_id is None:
        raise BlobFormatError(
            f"cannot pack a numpy array of dtype {array.dtype} into a DataJoint blob; "
            f"supported: {_SUPPORTED}"
        )
    is_complex = part_name != name
    stored = np.dtype(part_name).newbyteorder("<")
    parts = [
        _ARRAY,
        np.array([array.ndim, *array.shape], dtype=_U64).tobytes(),
        np.array([class_id, is_complex], dtype="<u4").tobytes(),
    ]
    if is_complex:
        parts.append(array.real.astype(stored, copy=False).tobytes(order="F"))
        parts.append(array.imag.astype(stored, copy=False).tobytes(order="F"))
    else:
        parts.append(array.astype(stored, copy=False).tobytes(order="F"))
    return b"".join(parts)


def _u64(n: int) -> bytes:
    return n.to_bytes(8, "little")


# --- unpacking -----------------------------------------------------------------------------------


class _Reader:
    """A cursor over a blob that turns every read past its end into a BlobFormatError."""

    __slots__ = ("_blob", "_pos")

    def __init__(self, blob: bytes, pos: int) -> None:
        self._blob = blob
        self._pos = pos

    def _advance(self, size: int, what: str) -> int:
        """Move past ``size`` bytes and return where they start."""
        start = self._pos
        left = len(self._blob) - start
        if size > left:
            raise BlobFormatError(
                f"truncated blob: {what} needs {size} bytes at offset {start}, only {left} left"
            )
        self._pos = start + size
        return start

    def take(self, size: int, what: str) -> bytes:
        start = self._advance(size, what)
        return self._blob[start : self._pos]

    def uint(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "little")

    def array(self, dtype: np.dtype[Any], count: int, what: str) -> npt.NDArray[Any]:
        """A read-only view of the next ``count`` elements (the bounds are checked first)."""
        start = self._advance(count * dtype.itemsize, what)
        return np.frombuffer(self._blob, dtype=dtype, count=count, offset=start)

    def rest(self) -> memoryview:
        start = self._advance(len(self._blob) - self._pos, "the rest")
        return memoryview(self._blob)[start:]

    def expect_end(self) -> None:
        left = len(self._blob) - self._pos
        if left:
            raise BlobFormatError(f"corrupt blob: {left} unexpected bytes after its value")


def _decompress(blob: bytes) -> bytes:
    reader = _Reader(blob, len(_ZLIB_PREFIX))
    expected = reader.uint(8, "the uncompressed length")
    stream = zlib.decompressobj()
    try:
        # Stop one byte past the declared length: a corrupt length or a hostile stream then
        # cannot make us inflate more than the blob claims to hold.
        out = stream.decompress(reader.rest(), min(expected, sys.maxsize - 1) + 1)
    except zlib.error as exc:
        raise BlobFormatError(f"corrupt compressed blob: {exc}") from exc
    if len(out) > expected:
        raise BlobFormatError(
            f"corrupt compressed blob: it inflates to more than its declared {expected} bytes"
        )
    if not stream.eof:
        raise BlobFormatError("truncated compressed blob: the zlib stream ends early")
    if stream.unused_data:
        raise BlobFormatError("corrupt compressed blob: unexpected bytes after the zlib stream")
    if len(out) != expected:
        raise BlobFormatError(
            f"corrupt compressed blob: declares {expected} bytes but inflates to {len(out)}"
        )
    return out


def _read_value(reader: _Reader) -> Any:
    code = reader.take(1, "a structure code")
    read = _READERS.get(code)
    if read is None:
        kind = _UNREAD_CODES.get(code)
        if kind is not None:
            raise BlobFormatError(
                f"the blob holds a DataJoint {kind}, which limsync does not read; "
                f"supported: {_SUPPORTED}"
            )
        raise BlobFormatError(f"corrupt blob: unknown structure code {code!r}")
    return read(reader)


def _read_array(reader: _Reader) -> npt.NDArray[Any]:
    ndim = reader.uint(8, "the array rank")
    shape = tuple(int(n) for n in reader.array(_U64, ndim, "the array shape"))
    class_id = reader.uint(4, "the array class id")
    complex_flag = reader.uint(4, "the array complex flag")
    dtype = _DTYPES.get(class_id)
    if dtype is None:
        if class_id in _UNREAD_CLASS_IDS:
            kind = _UNREAD_CLASS_IDS[class_id]
        elif class_id in _DATETIME64_CLASS_IDS:
            kind = "a datetime64 array"
        else:
            raise BlobFormatError(f"corrupt blob: unknown array class id {class_id}")
        raise BlobFormatError(
            f"the blob holds {kind}, which limsync does not read; supported: {_SUPPORTED}"
        )
    if complex_flag not in (0, 1):
        raise BlobFormatError(f"corrupt blob: array complex flag is {complex_flag}, not 0 or 1")
    count = math.prod(shape)
    stored = dtype.newbyteorder("<")
    values: npt.NDArray[Any]
    if complex_flag:
        complex_dtype = _COMPLEX_OF.get(dtype.name)
        if complex_dtype is None:
            raise BlobFormatError(f"the blob holds a complex {dtype.name} array; numpy has none")
        # Filled part by part rather than as real + 1j * imag, which turns inf into nan.
        values = np.empty(count, dtype=complex_dtype)
        values.real = reader.array(stored, count, "the real parts")
        values.imag = reader.array(stored, count, "the imaginary parts")
    else:
        raw = reader.array(stored, count, "the array elements")
        # Anything but 0 or 1 in a bool array would not pack back to the same bytes.
        if dtype.kind == "b" and bool(np.any(raw.view(np.uint8) > 1)):
            raise BlobFormatError("corrupt blob: a bool array holds a byte other than 0 or 1")
        values = raw.astype(dtype)  # a writable copy, in native byte order
    try:
        return values.reshape(shape, order="F")
    except ValueError as exc:  # e.g. more dimensions than numpy allows
        raise BlobFormatError(f"the blob's array of shape {shape} cannot be built: {exc}") from exc


def _read_int(reader: _Reader) -> int:
    n_bytes = reader.uint(2, "the int length")
    return int.from_bytes(reader.take(n_bytes, "an int"), "little", signed=True)


def _read_bool(reader: _Reader) -> bool:
    byte = reader.take(1, "a bool")
    if byte not in (b"\x00", b"\x01"):
        raise BlobFormatError(f"corrupt blob: a bool is stored as {byte!r}, not 0 or 1")
    return byte == b"\x01"


def _read_float(reader: _Reader) -> float:
    value: float = struct.unpack("<d", reader.take(8, "a float"))[0]
    return value


def _read_complex(reader: _Reader) -> complex:
    real, imag = struct.unpack("<dd", reader.take(16, "a complex"))
    return complex(real, imag)


def _read_str(reader: _Reader) -> str:
    encoded = reader.take(reader.uint(8, "the string length"), "a string")
    try:
        return encoded.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BlobFormatError(f"corrupt blob: a string is not valid UTF-8 ({exc})") from exc


def _read_bytes(reader: _Reader) -> bytes:
    return reader.take(reader.uint(8, "the bytes length"), "bytes")


def _read_none(reader: _Reader) -> None:
    return None


_READERS: Final[dict[bytes, Callable[[_Reader], Any]]] = {
    _ARRAY: _read_array,
    _NONE: _read_none,
    _STR: _read_str,
    _BYTES: _read_bytes,
    _INT: _read_int,
    _BOOL: _read_bool,
    _COMPLEX: _read_complex,
    _FLOAT: _read_float,
}

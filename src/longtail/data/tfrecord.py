"""TFRecord files of `tf.train.Example` protos, read without TensorFlow.

File format (one record after another, all integers little-endian):

    uint64  length                  payload size in bytes
    uint32  masked_crc32c(length)   over the 8 bytes of `length`
    bytes   payload[length]         a serialised tf.train.Example
    uint32  masked_crc32c(payload)

    masked_crc32c(b) = ((c >> 15) | (c << 17)) + 0xA282EAD8  (mod 2**32),  c = CRC-32C(b)

CRC-32C is the Castagnoli CRC (reflected polynomial 0x82F63B78, initial value and final xor 0xFFFFFFFF;
CRC-32C(b"123456789") = 0xE3069283). It is computed here for all records of one payload size at once,
one byte column at a time with numpy, so a 12,406-record file is checked in well under a second.

Payload (protocol buffers wire format; field number and wire type in a varint key = number << 3 | type):

    Example   { Features features = 1; }
    Features  { map<string, Feature> feature = 1; }   each entry { string key = 1; Feature value = 2; }
    Feature   { oneof { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
    BytesList { repeated bytes value = 1; }
    FloatList { repeated float value = 1; }   packed float32, or one 32-bit field per value
    Int64List { repeated int64 value = 1; }   packed varints, or one varint field per value

Every problem (a truncated file, a CRC mismatch, a malformed proto, a missing feature or one of another
type) is one LongtailError naming the file and the record number (0-based).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import LongtailError

_POLY = 0x82F63B78
_MASK_DELTA = 0xA282EAD8
KINDS = {1: "bytes_list", 2: "float_list", 3: "int64_list"}


def _table() -> np.ndarray:
    table = np.zeros(256, dtype=np.uint32)
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (_POLY if crc & 1 else 0)
        table[byte] = crc
    return table


_TABLE = _table()


def crc32c_rows(rows: np.ndarray) -> np.ndarray:
    """CRC-32C of every row of a (N, L) uint8 array, as uint32 (N,)."""
    crc = np.full(rows.shape[0], 0xFFFFFFFF, dtype=np.uint32)
    for column in range(rows.shape[1]):
        crc = _TABLE[(crc ^ rows[:, column]) & 0xFF] ^ (crc >> np.uint32(8))
    return crc ^ np.uint32(0xFFFFFFFF)


def masked_crc(crc: np.ndarray) -> np.ndarray:
    """TFRecord's masking of a CRC (uint32 arithmetic, wrapping)."""
    crc = crc.astype(np.uint64)
    rotated = ((crc >> np.uint64(15)) | (crc << np.uint64(17))) & np.uint64(0xFFFFFFFF)
    return ((rotated + np.uint64(_MASK_DELTA)) & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def _check(path: Path, rows: np.ndarray, stored: np.ndarray, records: np.ndarray, offsets: np.ndarray, what: str) -> None:
    """Raise on the first row whose masked CRC differs from the stored one."""
    bad = np.flatnonzero(masked_crc(crc32c_rows(rows)) != stored)
    if len(bad):
        first = bad[np.argmin(records[bad])]
        raise LongtailError(f"'{path}' record {records[first]} (byte {offsets[first]}): the CRC of its {what} does not match; "
                            "the file is corrupt, fetch it again")


def read_records(path: str | Path) -> list[bytes]:
    """Every payload of a TFRecord file, with both CRCs of every record checked: first the lengths' (a
    corrupt length would misplace every later record), then the payloads', all records of one size at once."""
    path = Path(path)
    data = path.read_bytes()
    buffer = np.frombuffer(data, dtype=np.uint8)
    offsets, lengths, truncated = [], [], ""
    offset = 0
    while offset < len(data):
        if offset + 12 > len(data):
            truncated = f"'{path}' ends inside the header of record {len(offsets)} (byte {offset})"
            break
        (length,) = struct.unpack_from("<Q", data, offset)
        if offset + 16 + length > len(data):
            truncated = f"'{path}' ends inside record {len(offsets)} (byte {offset}, {length} bytes announced)"
            offsets.append(offset)  # its length's CRC is checked below: a corrupt length is reported as such
            lengths.append(length)
            break
        offsets.append(offset)
        lengths.append(length)
        offset += 16 + length
    starts, sizes, numbers = np.asarray(offsets, dtype=np.int64), np.asarray(lengths, dtype=np.int64), np.arange(len(offsets))
    if len(starts):
        headers = buffer[starts[:, None] + np.arange(12)[None, :]]
        _check(path, headers[:, :8], headers[:, 8:].copy().view("<u4")[:, 0], numbers, starts, "length")
    if truncated:
        raise LongtailError(f"{truncated}: the file is truncated; fetch it again")
    for size in np.unique(sizes):  # payloads of one size are checked together
        which = np.flatnonzero(sizes == size)
        rows = np.stack([buffer[s + 12 : s + 12 + size] for s in starts[which]]) if size else np.zeros((len(which), 0), np.uint8)
        stored = np.stack([buffer[s + 12 + size : s + 16 + size] for s in starts[which]]).view("<u4")[:, 0]
        _check(path, rows, stored, which, starts[which], "data")
    return [data[s + 12 : s + 12 + n] for s, n in zip(offsets, lengths)]


class _Malformed(Exception):
    pass


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _Malformed("a varint runs past its message")
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos


def _fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of one message: an int for types 0, 1, 5; bytes for type 2."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if pos + size > len(buf):
                raise _Malformed("a fixed-size field runs past its message")
            value, pos = int.from_bytes(buf[pos : pos + size], "little"), pos + size
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise _Malformed("a length-delimited field runs past its message")
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise _Malformed(f"unsupported wire type {wire}")
        yield number, wire, value


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _values(kind: int, body: bytes) -> list:
    out: list = []
    for number, wire, value in _fields(body):
        if number != 1:
            continue
        if kind == 1 and wire == 2:
            out.append(bytes(value))
        elif kind == 3 and wire == 0:
            out.append(_signed64(value))
        elif kind == 3 and wire == 2:  # packed
            pos = 0
            while pos < len(value):
                item, pos = _varint(value, pos)
                out.append(_signed64(item))
        elif kind == 2 and wire == 5:
            out.append(struct.unpack("<f", value.to_bytes(4, "little"))[0])
        elif kind == 2 and wire == 2:  # packed
            if len(value) % 4:
                raise _Malformed("a packed float list is not a whole number of floats")
            out.extend(struct.unpack(f"<{len(value) // 4}f", value))
        else:
            raise _Malformed(f"a {KINDS[kind]} holds a field of wire type {wire}")
    return out


def parse_example(payload: bytes) -> dict[str, tuple[str, list]]:
    """A serialised tf.train.Example -> {feature name: (kind, values)}, kind one of KINDS' values.
    Raises ValueError on a malformed proto."""
    features: dict[str, tuple[str, list]] = {}
    try:
        for number, wire, body in _fields(payload):
            if number != 1 or wire != 2:
                continue
            for entry_number, entry_wire, entry in _fields(body):
                if entry_number != 1 or entry_wire != 2:
                    continue
                key, feature = None, b""
                for field_number, field_wire, value in _fields(entry):
                    if field_number == 1 and field_wire == 2:
                        key = bytes(value).decode("utf-8")
                    elif field_number == 2 and field_wire == 2:
                        feature = value
                if key is None:
                    raise _Malformed("a feature entry has no name")
                kinds = [(n, v) for n, w, v in _fields(feature) if n in KINDS and w == 2]
                kind, values = (kinds[-1][0], _values(*kinds[-1])) if kinds else (1, [])
                features[key] = (KINDS[kind], values)
    except (_Malformed, UnicodeDecodeError) as exc:
        raise ValueError(f"malformed tf.train.Example ({exc})") from None
    return features


def read_examples(path: str | Path) -> Iterator[tuple[int, dict[str, tuple[str, list]]]]:
    """(record number, parsed Example) for every record of a checked TFRecord file."""
    for number, payload in enumerate(read_records(path)):
        try:
            yield number, parse_example(payload)
        except ValueError as exc:
            raise LongtailError(f"'{path}' record {number}: {exc}; the file is not a TFRecord of tf.train.Example") from None


def feature(path: str | Path, record: int, example: dict[str, tuple[str, list]], name: str, kind: str) -> Any:
    """The single value of feature `name`, which must be a one-element `kind` list."""
    if name not in example:
        raise LongtailError(f"'{path}' record {record} has no feature '{name}' (it has {', '.join(sorted(example)) or 'none'})")
    found, values = example[name]
    if found != kind:
        raise LongtailError(f"'{path}' record {record}: feature '{name}' is a {found}, expected a {kind}")
    if len(values) != 1:
        raise LongtailError(f"'{path}' record {record}: feature '{name}' holds {len(values)} values, expected 1")
    return values[0]

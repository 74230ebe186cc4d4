"""A TFRecord writer for tests, written from the format (not from longtail's reader): records framed as
length, masked CRC-32C of the length, payload, masked CRC-32C of the payload; payloads serialised
tf.train.Example protos. And fake copies of google-research's CIFAR-LT files built with it."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Sequence

import numpy as np


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    """Byte-at-a-time CRC-32C (Castagnoli), the textbook loop."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64: two's complement, 10 bytes
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def bytes_feature(*values: bytes) -> bytes:
    return field(1, b"".join(field(1, v) for v in values))  # Feature.bytes_list


def int64_feature(*values: int, packed: bool = True) -> bytes:
    if packed:
        body = field(1, b"".join(varint(v) for v in values))
    else:
        body = b"".join(varint(1 << 3 | 0) + varint(v) for v in values)
    return field(3, body)  # Feature.int64_list


def float_feature(*values: float) -> bytes:
    return field(2, field(1, struct.pack(f"<{len(values)}f", *values)))  # Feature.float_list, packed


def example(features: dict[str, bytes]) -> bytes:
    """features: name -> a serialised Feature (one of the *_feature functions)."""
    entries = b"".join(field(1, field(1, name.encode()) + field(2, feature)) for name, feature in features.items())
    return field(1, entries)


def frame(payload: bytes) -> bytes:
    length = struct.pack("<Q", len(payload))
    return length + struct.pack("<I", masked(length)) + payload + struct.pack("<I", masked(payload))


def write_tfrecord(path: Path, payloads: Sequence[bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(frame(p) for p in payloads))
    return path


def image_examples(images: np.ndarray, labels: Sequence[int]) -> list[bytes]:
    """google's records: raw HWC uint8 bytes under image/encoded, the label under image/class/label."""
    return [example({"image/encoded": bytes_feature(img.tobytes()), "image/class/label": int64_feature(int(y))})
            for img, y in zip(images, labels)]


def write_fake_release(root: Path, variant: str, counts: Sequence[int], test_per_class: int, seed: int = 0) -> Path:
    """Fake `{variant}-lt_train.tfrecord` (class c: counts[c] images) and `{variant}_test.tfrecord` under
    root; images of class c are brighter for larger c (learnable). Returns root."""
    rng = np.random.default_rng(seed)
    classes = len(counts)

    def images(labels: np.ndarray) -> np.ndarray:
        level = (labels + 0.5) / classes * 200 + 25
        return np.clip(level[:, None, None, None] + rng.normal(0, 30, (len(labels), 32, 32, 3)), 0, 255).astype(np.uint8)

    train = rng.permutation(np.repeat(np.arange(classes), counts))
    test = rng.permutation(np.repeat(np.arange(classes), test_per_class))
    write_tfrecord(root / f"{variant}-lt_train.tfrecord", image_examples(images(train), train))
    write_tfrecord(root / f"{variant}_test.tfrecord", image_examples(images(test), test))
    return root

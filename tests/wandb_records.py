"""Read what reached an offline W&B run back from its `.wandb` file, with the record protobuf."""

from __future__ import annotations

import struct
import time
from pathlib import Path


def read_wandb_records(path: Path) -> list:
    """Parse a `.wandb` transaction log: a 7-byte header, then LevelDB-log chunks in 32 KiB blocks."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, block, pos, pending, records = path.read_bytes(), 32 * 1024, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer too small for a chunk header: zero padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if pos + 7 + length > len(data):  # a chunk still being written
            break
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk: a whole record
            record = Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def read_finished_run(run_dir: Path, timeout: float = 30.0) -> list:
    """The records of a finished run; wandb-core may still be flushing the file when `finish()` returns."""
    deadline = time.monotonic() + timeout
    while True:
        records = read_wandb_records(next(run_dir.glob("*.wandb")))
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)

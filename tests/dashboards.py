"""What the dashboards hold, read back independently of sharpcli: TensorBoard event files
through TensorBoard's own reader (which applies a resumed run's purge), and an offline W&B
run's history from its .wandb file (a LevelDB-style log of W&B's protobuf records)."""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path


def tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...] in the order written} of every scalar in the event files
    of `log_dir`, float32 ones (Lightning's, the Trainer's) and double ones (sharpcli's
    own) alike."""
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    acc = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})  # 0: keep every point
    acc.Reload()
    return {tag: [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]
            for tag in acc.Tags()["tensors"]
            if acc.SummaryMetadata(tag).plugin_data.plugin_name == "scalars"}  # not the text ones


def wandb_history(run_dir: Path) -> list[dict]:
    """The history rows of the offline W&B runs under `run_dir`/wandb, in the order logged."""
    rows = []
    for path in sorted(Path(run_dir, "wandb").glob("offline-run-*/run-*.wandb")):
        for record in _records(path):
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    return rows


def _records(path: Path):
    """W&B's records: a 7-byte file header, then chunks of (crc32, length, type) + bytes in
    blocks of 32 KiB; type 1 is a whole record, 2/3/4 its first/middle/last pieces."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, piece = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B", path
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        piece += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(piece)
            piece = b""
            yield record


def csv_column(run_dir: Path, column: str) -> dict[int, float]:
    """{step: value} of a metrics.csv column's filled cells, as written."""
    with open(Path(run_dir, "metrics.csv"), newline="") as f:
        return {int(r["step"]): float(r[column]) for r in csv.DictReader(f) if r[column]}


def assert_float32_board_holds(board: dict, tag: str, run_dirs: list[Path],
                               column: str = "sharpness") -> None:
    """A trainer's TensorBoard writer stores float32: at each measured step, `tag` holds each
    run's metrics.csv value rounded to float32 once, the runs' callbacks in their order."""
    import numpy as np

    cells = [csv_column(run, column) for run in run_dirs]
    assert cells[0] and all(list(c) == list(cells[0]) for c in cells)
    assert board[tag] == [(step, float(np.float32(c[step]))) for step in cells[0] for c in cells]

"""`histovl embed --export` streams the Parquet file in row groups (no full Arrow copy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from histovl.embed.run import export_parquet


def test_export_is_written_in_chunks_and_equals_the_rows(tmp_path: Path) -> None:
    emb = np.random.default_rng(0).normal(size=(10, 6)).astype(np.float32)
    paths = [f"img{i}.png" for i in range(10)]
    export_parquet(tmp_path / "e.parquet", paths, emb, chunk=3)
    f = pq.ParquetFile(tmp_path / "e.parquet")
    assert f.metadata.num_row_groups == 4
    table = f.read()
    assert table.column("path").to_pylist() == paths
    np.testing.assert_array_equal(np.array(table.column("embedding").to_pylist(), np.float32), emb)
    export_parquet(tmp_path / "empty.parquet", [], np.zeros((0, 0), np.float32))
    assert pq.read_table(tmp_path / "empty.parquet").num_rows == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

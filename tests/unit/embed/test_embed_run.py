"""`histovl embed` end to end: export, and what it says about skipped inputs."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
from typer.testing import CliRunner

from histovl.cli.app import app
from histovl.models import save_model_dir
from tests.helpers.tiny import tiny_encoder


def test_skipped_inputs_are_named_on_screen_and_next_to_the_export(class_folder, tmp_path):
    bad = class_folder / "lung_n" / "broken.png"
    bad.write_bytes(b"not a png")
    model = save_model_dir(tiny_encoder(0), tmp_path / "m")
    export = tmp_path / "emb.parquet"
    r = CliRunner().invoke(app, ["embed", "--model", str(model), "--data", str(class_folder), "--cache", str(tmp_path / "c"),
                                 "--export", str(export), "--on-error", "skip", "--quiet", "--workers", "0"],
                                env={"COLUMNS": "400"})
    assert r.exit_code == 0, r.output
    assert "broken.png" in r.output and "1 failed" in r.output
    table = pq.read_table(export).to_pandas()
    assert len(table) == 12 and not table["path"].str.contains("broken").any()
    skipped = pd.read_csv(tmp_path / "emb.skipped.csv")
    assert list(skipped.columns) == ["path", "reason"] and skipped["path"].iloc[0].endswith("broken.png")
    assert skipped["reason"].iloc[0]

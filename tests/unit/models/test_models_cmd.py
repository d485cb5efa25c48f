"""`histovl models` through typer's CliRunner."""

from __future__ import annotations

from typer.testing import CliRunner

from histovl.cli.app import app
from histovl.models import ModelCard, register_card


def test_models_lists_every_model_and_weights_presence(open_clip_hub_repo, scratch_cards) -> None:
    repo, _ = open_clip_hub_repo
    register_card(
        ModelCard(
            name="cached-tiny", family="open_clip", architecture="x", source=f"hf-hub:{repo}", image_size=32,
            mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), context_length=77,
        )
    )
    result = CliRunner().invoke(app, ["models"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    lines = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 3}
    for name in ("openai-vit-b-16", "plip", "conch", "biomedclip", "quiltnet-b-32", "cached-tiny"):
        assert name in lines
    assert "448" in lines["conch"] and "128" in lines["conch"]
    assert lines["cached-tiny"].rstrip(" │").endswith("yes")
    assert lines["conch"].rstrip(" │").endswith("no")  # the offline test cache does not hold CONCH

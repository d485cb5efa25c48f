"""The `histovl` command line: a thin typer layer over the library.

Each command is a module-level function in a `*_cmd` module; this file only registers them
(`COMMANDS`). No command module holds logic: it parses options into a typed config and a
`RunOptions` (`histovl.cli.common`) and calls the library function of the same name.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import typer

from histovl._lean_imports import enable as enable_lean_imports
from histovl.cli.guard import (
    exit_now,
    guarded,
    install_signal_handlers,
    install_warning_format,
    run_cli,
    stopped_by_signal,
)
from histovl.errors import HistovlError

app = typer.Typer(
    name="histovl",
    help="Vision-language toolkit for histopathology: zero-shot, robustness, retrieval, adaptation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: Command groups (name -> help); their commands are listed in COMMANDS.
GROUPS: dict[str, str] = {
    "cache": "The embedding cache folder: sizes per model, checksums, pruning, compaction.",
    "cmm": "HistoCLIP's Cross-Modal Matching head on frozen image features.",
    "data": "Build and convert data sets.",
    "fewshot": "Adapt with a few labels: linear probe, kNN, SimpleShot, Tip-Adapter, text-initialised linear.",
    "index": "Build a persistent image index and search it by image or text.",
    "prompts": "Shipped prompt sets and your own YAML files.",
    "slides": "Whole-slide images: tiling, tile embeddings, slide zero-shot.",
    "stainalign": "HistoStainAlign: predict IHC status from H&E via paired-slide alignment.",
}

#: Every command: its words on the command line -> "module:function" of its module-level CLI
#: function. Each CLI function parses options and calls the library function of the same name
#: (exported by `histovl`); tests/unit/cli/test_public_api.py checks that pairing.
COMMANDS: dict[str, str] = {
    "models": "histovl.cli.models_cmd:models_command",
    "doctor": "histovl.cli.doctor_cmd:doctor_command",
    "prompts list": "histovl.cli.prompts_cmd:prompts_list_command",
    "prompts show": "histovl.cli.prompts_cmd:prompts_show_command",
    "embed": "histovl.cli.embed_cmd:embed_command",
    "cache info": "histovl.cli.cache_cmd:cache_info_command",
    "cache verify": "histovl.cli.cache_cmd:cache_verify_command",
    "cache prune": "histovl.cli.cache_cmd:cache_prune_command",
    "cache compact": "histovl.cli.cache_cmd:cache_compact_command",
    "zeroshot": "histovl.cli.zeroshot_cmd:zeroshot_command",
    "predict": "histovl.cli.predict_cmd:predict_command",
    "compare": "histovl.cli.compare_cmd:compare_command",
    "bench": "histovl.cli.bench_cmd:bench_command",
    "ablate-fusion": "histovl.cli.fusion_cmd:ablate_fusion_command",
    "multilabel": "histovl.cli.multilabel_cmd:multilabel_command",
    "retrieve": "histovl.cli.retrieve_cmd:retrieve_command",
    "index build": "histovl.cli.retrieve_cmd:index_build_command",
    "index query": "histovl.cli.retrieve_cmd:index_query_command",
    "robustness": "histovl.cli.robustness_cmd:robustness_command",
    "cmm fit": "histovl.cli.cmm_cmd:cmm_fit_command",
    "cmm eval": "histovl.cli.cmm_cmd:cmm_eval_command",
    "fewshot eval": "histovl.cli.fewshot_cmd:fewshot_eval_command",
    "fewshot fit": "histovl.cli.fewshot_cmd:fewshot_fit_command",
    "finetune": "histovl.cli.finetune_cmd:finetune_command",
    "slides tile": "histovl.cli.slides_cmd:slides_tile_command",
    "slides embed": "histovl.cli.slides_cmd:slides_embed_command",
    "stainalign fit": "histovl.cli.stainalign_cmd:stainalign_fit_command",
    "stainalign eval": "histovl.cli.stainalign_cmd:stainalign_eval_command",
    "stainalign build-deepliif": "histovl.cli.stainalign_cmd:stainalign_build_deepliif_command",
    "data mosaic": "histovl.cli.data_cmd:data_mosaic_command",
    "serve": "histovl.cli.serve_cmd:serve_command",
}


#: Every command -> the name of its library function in `histovl` (same meaning, same inputs).
API_FUNCTIONS: dict[str, str] = {
    "models": "model_statuses",
    "doctor": "doctor",
    "prompts list": "list_prompt_sets",
    "prompts show": "load_prompt_set",
    "embed": "embed",
    "cache info": "cache_info",
    "cache verify": "cache_verify",
    "cache prune": "cache_prune",
    "cache compact": "cache_compact",
    "zeroshot": "zeroshot",
    "predict": "predict",
    "compare": "compare",
    "bench": "bench",
    "ablate-fusion": "ablate_fusion",
    "multilabel": "multilabel",
    "retrieve": "retrieve",
    "index build": "build_index",
    "index query": "query_index",
    "robustness": "robustness",
    "cmm fit": "cmm_fit",
    "cmm eval": "cmm_eval",
    "fewshot eval": "fewshot_eval",
    "fewshot fit": "fewshot_fit",
    "finetune": "finetune",
    "slides tile": "tile_slide",
    "slides embed": "slides_embed",
    "stainalign fit": "stainalign_fit",
    "stainalign eval": "stainalign_eval",
    "stainalign build-deepliif": "build_deepliif_pairs",
    "data mosaic": "mosaic",
    "serve": "serve",
}


def command_function(target: str) -> Any:
    """The CLI function behind a "module:function" entry of `COMMANDS`."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _register_all() -> None:
    # Every command is wrapped by `guarded`: its outputs and device are checked before it runs
    # (docs/reliability.md, "unusable output path"), so no command can forget the check.
    groups: dict[str, typer.Typer] = {}
    for words, target in COMMANDS.items():
        group, _, sub = words.rpartition(" ")
        if group and group not in groups:
            groups[group] = typer.Typer(help=GROUPS[group], no_args_is_help=True)
            app.add_typer(groups[group], name=group)
        (groups[group] if group else app).command(sub)(guarded(words, command_function(target)))


_register_all()


# Commands written to run under `torchrun --nproc-per-node N --no-python histovl ...` (one
# training job across N processes, rank 0 writing). Any other command started N times would have
# N processes doing the same work and writing the same files, so it is refused up front.
TORCHRUN_COMMANDS = (("finetune",), ("cmm", "fit"), ("stainalign", "fit"))


def check_torchrun_command(argv: list[str], world_size: int) -> None:
    """Refuse a command that has no multi-process mode when started by torchrun (WORLD_SIZE > 1)."""
    if world_size <= 1:
        return
    words = [a for a in argv if not a.startswith("-")]
    if any(tuple(words[: len(c)]) == c for c in TORCHRUN_COMMANDS):
        return
    allowed = ", ".join("histovl " + " ".join(c) for c in TORCHRUN_COMMANDS)
    raise HistovlError(
        f"`histovl {' '.join(words[:2])}` runs in one process; under torchrun (WORLD_SIZE={world_size}) "
        f"only {allowed} are distributed. Start it without torchrun "
        "(embedding at scale: `histovl embed --engine ray`)."
    )


def main() -> None:
    """Console-script entry point and the one error boundary (`histovl.cli.guard.run_cli`): user
    errors print one line and exit 2, SIGTERM/SIGINT stop cleanly (exit 143/130), bugs print the
    traceback plus one line and exit 1."""
    install_signal_handlers()
    install_warning_format()
    enable_lean_imports()  # ~3 s less for the first open_clip import (histovl._lean_imports)

    def body() -> None:
        check_torchrun_command(sys.argv[1:], int(os.environ.get("WORLD_SIZE", "1") or 1))
        app()

    code = run_cli(body)
    if stopped_by_signal():
        exit_now(code)
    sys.exit(code)


if __name__ == "__main__":
    main()

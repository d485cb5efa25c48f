"""`histovl fewshot eval` / `histovl fewshot fit`: parse options, call `histovl.heads.fewshot_run`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from histovl._compat import StrEnum
from histovl.cli.common import OneModelOpt, OutOpt, print_skipped, with_run_options
from histovl.options import RunOptions


class MethodChoice(StrEnum):
    linear = "linear"
    knn = "knn"
    simpleshot = "simpleshot"
    tip = "tip"
    text_linear = "text-linear"


OptionalPromptsOpt = Annotated[str | None, typer.Option("--prompts", "-p", help="Prompt-set name or YAML file: adds the zero-shot row and the tip / text-linear methods.")]
KnnOpt = Annotated[int, typer.Option("--knn-k", min=1, help="Neighbours of the knn method.")]
StepsOpt = Annotated[int, typer.Option("--text-linear-steps", min=0, help="L-BFGS iterations of text-linear (0 = zero-shot).")]


@with_run_options()
def fewshot_eval_command(
    model: OneModelOpt,
    out: OutOpt,
    options: RunOptions,
    data: Annotated[Path | None, typer.Option("--data", "-d", help="One labelled data set: whole groups are split into a support pool and a query set.")] = None,
    support: Annotated[Path | None, typer.Option("--support", help="Labelled data the supports are drawn from (with --query: cross-site).")] = None,
    query: Annotated[Path | None, typer.Option("--query", help="Labelled data to evaluate on (with --support).")] = None,
    prompts: OptionalPromptsOpt = None,
    method: Annotated[list[MethodChoice] | None, typer.Option("--method", help="Method to run (repeat); default: every method that applies.")] = None,
    shots: Annotated[str, typer.Option("--shots", help="Images per class, comma-separated; 'all' = the whole support pool.")] = "1,2,4,8,16,all",
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Support draws per shot count.")] = 5,
    query_fraction: Annotated[float, typer.Option("--query-fraction", min=0.01, max=0.99, help="With --data: share of images (whole groups) in the query set.")] = 0.3,
    near_duplicates: Annotated[bool, typer.Option("--near-duplicates/--no-near-duplicates", help="Also keep near-duplicate copies (rotations, flips) on one side of the split.")] = True,
    knn_k: KnnOpt = 20,
    text_linear_steps: StepsOpt = 200,
) -> None:
    """Few-shot evaluation: every method x shots x seed against zero-shot, with CIs; writes fewshot.csv, metrics.json, a figure, run.json, report.html."""
    from histovl.heads import FewshotConfig, fewshot_eval
    from histovl.heads.fewshot_outputs import summary_table
    from histovl.heads.fewshot_run import parse_shots

    if (data is None) == (support is None) or (data is not None and query is not None):
        raise typer.BadParameter("give either --data (split by group) or --support with an optional --query")
    config = FewshotConfig(
        methods=tuple(m.value for m in method) if method else None, shots=parse_shots(shots), seeds=seeds,
        query_fraction=query_fraction, near_duplicates=near_duplicates, knn_k=knn_k, text_linear_steps=text_linear_steps,
    )
    res = fewshot_eval(model, data if data is not None else support, query, prompts, out, config, options)
    typer.echo(summary_table(res.metrics).to_string(index=False))
    print_skipped(res.skipped)
    typer.echo(f"query n = {res.metrics['n_query']}; support pool n = {res.metrics['n_support_pool']}; report: {out / 'report.html'}")


@with_run_options(exclude=("n_boot",))
def fewshot_fit_command(
    model: OneModelOpt,
    data: Annotated[Path, typer.Option("--data", "-d", help="Labelled images (class folder or CSV manifest): the support set.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Head folder to write (head.json, head.safetensors, run.json).")],
    options: RunOptions,
    prompts: Annotated[str | None, typer.Option("--prompts", "-p", help="Prompt-set name or YAML file: needed by tip and text-linear; the head's classes follow its order.")] = None,
    method: Annotated[MethodChoice, typer.Option("--method", help="Few-shot method.")] = MethodChoice.linear,
    knn_k: KnnOpt = 20,
    text_linear_steps: StepsOpt = 200,
) -> None:
    """Fit one few-shot head on labelled images and save it (for `histovl predict --head`)."""
    from histovl.heads import FewshotFitConfig, fewshot_fit

    config = FewshotFitConfig(method=method.value, knn_k=knn_k, text_linear_steps=text_linear_steps)
    res = fewshot_fit(model, data, out, config, options, prompts=prompts)
    counts: dict[str, Any] = res.head.class_counts_
    typer.echo(f"{res.head.method} head on {res.n} images ({', '.join(f'{c}: {n}' for c, n in counts.items())}); "
               f"chosen: {res.head.chosen()}")
    print_skipped(res.skipped)
    typer.echo(f"head: {out}")

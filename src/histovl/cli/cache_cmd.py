"""`histovl cache info | verify | prune | compact`: the embedding cache folder (`histovl.embed.cache_admin`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

_CACHE_HELP = "The embedding cache folder (default: $HISTOVL_CACHE or ~/.cache/histovl/embeddings)."
CacheDir = Annotated[Path | None, typer.Option("--cache", help=_CACHE_HELP)]


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def cache_info_command(
    root: CacheDir = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object per namespace.")] = False,
) -> None:
    """Each namespace: size, entries, model (weights id), preprocessing, transform, last use."""
    from histovl.embed.cache_admin import cache_info

    rows = cache_info(root)
    if json_output:
        typer.echo(json.dumps([r.to_dict() for r in rows], indent=1))
        return
    table = Table("namespace", "size", "entries", "dim", "model / weights id", "preprocessing", "transform", "last used")
    for r in rows:
        entries = "format 1: migrated on next use" if r.entries is None else f"{r.entries:,}"
        if r.quarantined:
            entries += f" (+{r.quarantined} quarantined)"
        who = f"{r.model}\n{r.weights_id}" if r.model else r.weights_id
        table.add_row(r.name, _mb(r.size_bytes), entries, str(r.dim or "-"), who, r.preprocessing, r.transform, _when(r.last_used))
    console = Console(width=max(160, Console().width))
    console.print(table)
    console.print(f"{len(rows)} namespace(s), {_mb(sum(r.size_bytes for r in rows))}")


def cache_verify_command(
    root: CacheDir = None,
    repair: Annotated[bool, typer.Option("--repair", help="Move records that fail their checksum to the quarantine table.")] = False,
) -> None:
    """Check every store's structure and every record's CRC-32; exit 2 naming each damaged file."""
    from histovl.embed.cache_admin import cache_verify

    report = cache_verify(root, repair=repair)
    typer.echo(f"{report.n_namespaces} namespace(s), {report.n_records:,} record(s) checked")
    if report.ok:
        typer.echo("ok")
        return
    for path, reason in report.bad_files.items():
        typer.secho(f"damaged: {path}: {reason}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def cache_prune_command(
    root: CacheDir = None,
    model: Annotated[str | None, typer.Option("--model", help="Glob on the weights id or model name (e.g. '*vit-b-32*').")] = None,
    older_than: Annotated[str | None, typer.Option("--older-than", help="Not used for this long: 30d, 12h, 90m, 2w.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be removed; remove nothing.")] = False,
) -> None:
    """Remove whole namespaces by model and/or age (every criterion given must match)."""
    from histovl.embed.cache_admin import cache_prune

    removed = cache_prune(root, model=model, older_than=older_than, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for r in removed:
        typer.echo(f"{verb} {r.name}  {_mb(r.size_bytes)}  {r.model or r.weights_id}  {r.transform}  last used {_when(r.last_used)}")
    typer.echo(f"{verb} {len(removed)} namespace(s), {_mb(sum(r.size_bytes for r in removed))}")


def cache_compact_command(root: CacheDir = None) -> None:
    """Migrate format-1 namespaces and reclaim free space in every store."""
    from histovl.embed.cache_admin import cache_compact

    for name, before, after in cache_compact(root):
        typer.echo(f"{name}: {_mb(before)} -> {_mb(after)}")

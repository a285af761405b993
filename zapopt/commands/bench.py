"""``zapopt bench``: end-to-end latency of an optimized model against its original."""
from __future__ import annotations

import click

from zapopt.commands.group import cli
from zapopt.commands.options import image_option_flags, int_list


@cli.command("bench")
@click.argument("model", type=click.Path(dir_okay=False, path_type=str))
@click.option("--reference", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="The original model MODEL was optimized from (run in stock onnxruntime, ORT_ENABLE_ALL).")
@click.option("--data", required=True, metavar="DATA", help="Inputs to time on (image folder, .npy, .npz, embedded:...).")
@click.option("--batch", "batches", default="1,8", show_default=True, metavar="B1,B2,...", help="Batch sizes.")
@click.option("--threads", default="1,2", show_default=True, metavar="T1,T2,...", help="onnxruntime intra-op threads.")
@click.option("--runs", type=click.IntRange(min=3), default=20, show_default=True,
              help="Paired rounds of alternated runs per batch size and thread count; a wall-time round is "
                   "the best of 3 interleaved runs of each model (a busy machine only ever adds time).")
@click.option("--cpu-time", "cpu_clock", is_flag=True,
              help="Time the 1-thread rows in the CPU time of the thread running them (what a busy machine "
                   "preempts does not count); other rows stay in wall time.")
@click.option("--per-layer/--no-per-layer", default=True, show_default=True,
              help="Also profile each native layer against the stock nodes it replaced (batch 1, at the fewest --threads).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Also write the full report (with the machine it ran on) as JSON here.")
@image_option_flags
def bench_command(model, reference, data, batches, threads, runs, cpu_clock, per_layer, json_path,
                  image_options) -> None:
    """End-to-end latency of MODEL against its original, runs alternated in one process.

    Reports the speed-up per batch size and thread count as a median with its interquartile
    range, and per layer each native node's time against the stock nodes it replaced.
    """
    from zapopt.bench import bench

    report = bench(model, reference, data, batches=int_list(batches, "--batch"), threads=int_list(threads, "--threads"),
                   runs=runs, per_layer=per_layer, cpu_clock=cpu_clock, image_options=image_options,
                   json_path=json_path)
    click.echo(report.format_table())
    if json_path:
        click.echo(f"\nwrote {json_path}")

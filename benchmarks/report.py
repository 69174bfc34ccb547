"""Markdown tables of ``benchmarks/gpu_engines.py`` results, as docs/benchmarks.md shows them.

    python benchmarks/report.py RESULTS.json [RESULTS.json ...]

Per recipe and stage, the kernel rows of every system at every (audio length, batch) measured, with ours (fp16)
against the compiled reference and our fraction of the floor; then the kernel profile, end to end, batch-1 latency and
agreement (each where the run measured it). Each file is one benchmark process: rows are compared only within a file.
``gpu_engines.py`` prints the same at the end of a run, with each profile's longest kernels.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable

SYSTEMS = {"reference eager fp32": "ref eager fp32", "reference eager fp16": "ref eager fp16",
           "reference compiled fp16": "ref compiled fp16", "engines fp16": "**ours fp16**", "engines bf16": "ours bf16"}
OURS, COMPILED = "engines fp16", "reference compiled fp16"
STAGES = {"encoder+ctc": "encoder+CTC", "rescoring": "rescoring 10 x 20"}


def _table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def kernel_tables(report: dict) -> list[str]:
    """One table per recipe and stage: ms per system, ours vs compiled, the floor and our fraction of it."""
    out = []
    rows = report.get("kernels", [])
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        for stage, title in STAGES.items():
            cells: dict[tuple[int, int], dict[str, dict]] = {}
            for r in rows:
                if r["recipe"] == recipe and r["stage"] == stage:
                    cells.setdefault((r["seconds"], r["batch"]), {})[r["system"]] = r
            systems = [s for s in SYSTEMS if any(s in c for c in cells.values())]
            body = []
            for (seconds, batch), by_system in sorted(cells.items()):
                row = [f"{seconds} s, b{batch}"] + [f"{by_system[s]['ms']:.3f}" if s in by_system else "" for s in systems]
                ours = by_system.get(OURS)
                ratio = f"{by_system[COMPILED]['ms'] / ours['ms']:.2f}x" if ours and COMPILED in by_system else ""
                floor = (f"{ours['floor_ms']:.3f}", f"{100 * ours['fraction_of_floor']:.1f} %") if ours else ("", "")
                body.append(row + [ratio, *floor])
            out += [f"\n{recipe}, {title}, ms:\n"] + _table(
                ["audio, batch"] + [SYSTEMS[s] for s in systems] + ["ours fp16 vs compiled", "floor", "ours fp16 of floor"],
                body)
    return out


def profile_table(reports: list[dict], top_kernels: int = 0) -> list[str]:
    """Kernel count and device time per profiled call, by kernel group; with ``top_kernels``, each call's longest
    kernels listed after the table."""
    body, tops = [], []
    for report in reports:
        for r in report.get("profile", []):
            where = [r["recipe"], r["stage"], r["system"], f"b{r['batch']}, {r['seconds']} s"]
            groups = ", ".join(f"{g} {v['ms']:.3f} ({v['kernels']})" for g, v in r["groups"].items())
            body.append(where + [str(r["kernels"]), f"{r['kernel_ms']:.3f}", groups])
            if top_kernels:
                tops.append(f"- {' '.join(where)}: " + "; ".join(f"{k['ms']:.3f} ms x{k['count']} {k['name'][:100]}"
                                                               for k in r["top"][:top_kernels]))
    return _table(["recipe", "stage", "system", "shape", "kernels", "ms", "ms (kernels) by group"], body) + (
        [""] + tops if tops else [])


def e2e_table(reports: list[dict]) -> list[str]:
    body = []
    for report in reports:
        by_system = {r["system"]: r for r in report.get("e2e", [])}
        if not by_system:
            continue
        cells = [f"{by_system[s]['x_real_time']:,.0f}x ({by_system[s]['wall_s']:.3f} s)" if s in by_system else ""
                 for s in SYSTEMS]
        stages = by_system.get(OURS, {}).get("stage_s", {})
        body.append([report.get("e2e", [])[0]["recipe"]] + cells + [", ".join(f"{k} {v}" for k, v in stages.items())])
    return _table(["recipe"] + list(SYSTEMS.values()) + ["ours fp16: stages when waited for, s"], body)


def latency_table(reports: list[dict]) -> list[str]:
    body = []
    for report in reports:
        for r in report.get("latency", []):
            body.append([r["recipe"], SYSTEMS[r["system"]], f"{r['ms']:.2f}",
                         ", ".join(f"{k} {v}" for k, v in r["stage_ms"].items())])
    return _table(["recipe", "system", "ms", "stages, ms"], body)


def agreement_table(reports: list[dict]) -> list[str]:
    body = []
    for report in reports:
        for r in report.get("agreement", []):  # rows before session 14 name no recipe: a run's kernel rows do
            recipe = r.get("recipe") or (report["kernels"][0]["recipe"] if report.get("kernels") else "")
            body.append([recipe, SYSTEMS[r["system"]], r["mode"], f"{r['identical_clear']}/{r['clear_margin']}",
                         f"{r['identical_all']}/{r['utterances']}"])
    return _table(["recipe", "system", "mode", "identical, reference margin > 1e-3", "identical, all"], body)


def report_markdown(reports: list[dict], top_kernels: int = 0) -> str:
    lines = []
    for report in reports:
        ceilings = report["ceilings"]
        lines.append(f"\n`{report['command']}`: {report['device']}, torch {report['torch']}; matmul "
                     f"{ceilings['matmul_tflops_float16']:.0f} TFLOP/s fp16, {ceilings['matmul_tflops_bfloat16']:.0f} "
                     f"bf16, {ceilings['matmul_tflops_float32']:.0f} fp32; copy {ceilings['copy_gbps']:,.0f} GB/s")
        lines += kernel_tables(report)
    for title, table in (("Kernel profile of one call, ms", lambda r: profile_table(r, top_kernels)),
                         ("End to end", e2e_table), ("Batch 1, one 10 s wav", latency_table),
                         ("Agreement with reference.py fp32", agreement_table)):
        rows = table(reports)
        if len(rows) > 2:  # parts the runs did not measure get no table
            lines += [f"\n{title}:\n"] + rows
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="gpu_engines.json files")
    args = p.parse_args()
    reports = []
    for path in args.results:
        with open(path, encoding="utf-8") as f:
            reports.append(json.load(f))
    print(report_markdown(reports), end="")


if __name__ == "__main__":
    main()

"""benchmarks/report.py: the tables docs/benchmarks.md shows, from gpu_engines.py's results."""

import glob
import json
import os

from benchmarks.report import kernel_tables, report_markdown

RESULTS = sorted(glob.glob(os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs", "results", "*.json")))


def _row(system: str, ms: float, stage: str = "encoder+ctc") -> dict:
    return {"recipe": "u2pp", "stage": stage, "system": system, "batch": 64, "seconds": 10, "ms": ms,
            "floor_ms": 1.0, "fraction_of_floor": 1.0 / ms}


def test_ratio_floor_and_absent_systems():
    """Ours against the compiled reference, our fraction of the floor; a run without the reference leaves those cells
    empty instead of failing."""
    with_reference = "\n".join(kernel_tables({"kernels": [_row("reference compiled fp16", 9.0), _row("engines fp16", 4.5)]}))
    assert "| 10 s, b64 | 9.000 | 4.500 | 2.00x | 1.000 | 22.2 % |" in with_reference
    ours_only = "\n".join(kernel_tables({"kernels": [_row("engines fp16", 4.5), _row("engines bf16", 5.0)]}))
    assert "| 10 s, b64 | 4.500 | 5.000 |  | 1.000 | 22.2 % |" in ours_only


def test_the_stored_results_render():
    """Every stored result file renders, and its rows are the measured values."""
    assert RESULTS
    reports = []
    for path in RESULTS:
        with open(path, encoding="utf-8") as f:
            reports.append(json.load(f))
    text = report_markdown(reports)
    for report in reports:
        for row in report["kernels"]:
            assert f"{row['ms']:.3f}" in text
        for row in report["e2e"]:
            assert f"{row['x_real_time']:,.0f}x" in text


def test_parts_not_measured_get_no_table():
    latency = {"recipe": "u2pp", "system": "engines fp16", "ms": 5.0, "stage_ms": {"fbank": 0.5}}
    report = {"command": "x", "device": "GPU", "torch": "2", "kernels": [], "e2e": [], "agreement": [],
              "latency": [latency], "ceilings": {"matmul_tflops_float16": 1, "matmul_tflops_bfloat16": 1,
                                                 "matmul_tflops_float32": 1, "copy_gbps": 1}}
    text = report_markdown([report])
    assert "| u2pp | **ours fp16** | 5.00 | fbank 0.5 |" in text
    assert "End to end" not in text and "Agreement" not in text

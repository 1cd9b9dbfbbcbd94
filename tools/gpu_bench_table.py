"""The tables of one tools/gpu_bench.sh run: reads OUT/parts, writes OUT/results.json and
OUT/table.md (Markdown), one row per part, failed and skipped parts included.

  python tools/gpu_bench_table.py OUT
"""

from __future__ import annotations

import glob
import json
import os
import sys
from typing import Any

import benchmark  # tools/benchmark.py, beside this script: its formatting helpers

Parts = dict[str, dict[str, Any]]


def load_parts(folder: str) -> Parts:
  """{part: {"status": what gpu_bench.sh recorded, "report": its JSON or None}}, in run order."""
  parts = {}
  for path in glob.glob(os.path.join(folder, "*.status.json")):
    with open(path, encoding="utf-8") as f:
      status = json.load(f)
    report_path = path[:-len(".status.json")] + ".json"
    report = None
    if os.path.exists(report_path):
      with open(report_path, encoding="utf-8") as f:
        report = json.load(f)
    parts[status["part"]] = {"status": status, "report": report}
  return dict(sorted(parts.items(), key=lambda item: item[1]["status"]["order"]))


def _outcome(part: dict[str, Any]) -> str:
  status = part["status"]
  if status["status"] == "ok":
    return "ok"
  return status["status"] + ("" if status["rc"] is None else f" (rc {status['rc']})")


def train_table(parts: Parts) -> str:
  lines = ["| data | batch | dtype | step median [IQR] (ms) | images/s | XLA GFLOP per step | "
           "TFLOP/s / peak / MFU | peak memory | compile (s) | part |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for name, part in parts.items():
    status = part["status"]
    if status["kind"] != "train":
      continue
    step = (part["report"] or {}).get("train_step")
    cells = [status["data"], str(status["batch"]), status["dtype"]]
    if step is None:
      cells += ["-"] * 6 + [f"{name}: {_outcome(part)}"]
    else:
      t, peak = step["step_time"], step["peak_memory"]
      cells += [f"{benchmark._ms(t['median_s'])} [{benchmark._ms(t['q25_s'])}, "
                f"{benchmark._ms(t['q75_s'])}]",
                f"{step['global_images_per_s']:.4g}",
                benchmark._flops(step["xla_analysis"]["flops"]).replace(" GFLOP", ""),
                benchmark._utilisation(step["utilisation"]),
                "n/a" if peak is None else benchmark._bytes(peak["max_peak_bytes_in_use"]),
                f"{step['compile_s']:.1f}", f"{name} ({step['data']} images)"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def stream_table(parts: Parts) -> str:
  lines = ["| N | D | k | median per call (s) | compile (s) | XLA temp | peak memory | part |",
           "|---|---|---|---|---|---|---|---|"]
  for name, part in parts.items():
    status = part["status"]
    if status["kind"] != "stream":
      continue
    results = (part["report"] or {}).get("drift_loss") or [None]
    for r in results:
      if r is None:
        cells = [str(status["n"]), str(status["d"]), str(status["k"])] + ["-"] * 4
        cells.append(f"{name}: {_outcome(part)}")
      else:
        peak = r["peak_memory_so_far"]
        cells = [str(r["batch_size"]), str(status["d"]), str(r["num_lookahead"]),
                 f"{r['time']['median_s']:.3g}", f"{r['compile_s']:.1f}",
                 benchmark._bytes(r["xla_analysis"]["temp_bytes"]),
                 "n/a" if peak is None else benchmark._bytes(peak["max_peak_bytes_in_use"]),
                 name]
      lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def grid_tables(parts: Parts) -> list[str]:
  out = []
  for name, part in parts.items():
    if part["status"]["kind"] != "grid":
      continue
    report = part["report"]
    if report is None:
      out.append(f"{name}: {_outcome(part)}")
    else:
      out.append(benchmark.format_compare_long(report["compare"]))
  return out


def status_table(parts: Parts) -> str:
  lines = ["| part | outcome | seconds | timeout (s) |", "|---|---|---|---|"]
  for name, part in parts.items():
    s = part["status"]
    lines.append(f"| {name} | {_outcome(part)} | {s['seconds']} | {s['timeout_s']} |")
  return "\n".join(lines)


def environment_line(parts: Parts) -> str:
  for part in parts.values():
    env = (part["report"] or {}).get("environment")
    if env:
      return (f"{env['device_kind']} ({env['backend']}, {env['device_count']} device(s)), "
              f"jax {env['jax_version']}, host {env['host_cpu']} x {env['host_cpu_count']}")
  return "no part wrote a report"


def render(parts: Parts) -> str:
  dry = any(p["status"].get("dry_run") for p in parts.values())
  lines = ["# tools/gpu_bench.sh" + (" (DRY_RUN: toy sizes, not a benchmark)" if dry else ""),
           "", environment_line(parts), "", "## Train step", "", train_table(parts), "",
           "## Drift loss at each matmul precision (k = 0, value and gradient)", ""]
  lines += sum(([t, ""] for t in grid_tables(parts)), []) or ["no grid part", ""]
  lines += ["## Streaming", "", stream_table(parts), "", "## Parts", "", status_table(parts)]
  return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
  if len(argv) != 2:
    raise SystemExit(__doc__)
  out = argv[1]
  parts = load_parts(os.path.join(out, "parts"))
  with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
    json.dump(parts, f, indent=1)
  with open(os.path.join(out, "table.md"), "w", encoding="utf-8") as f:
    f.write(render(parts))


if __name__ == "__main__":
  main(sys.argv)

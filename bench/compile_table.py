"""Markdown rows of bench/RESULTS.md ("Compiled for TPU") from compile_report.json files.

    python -m bench.compile_table OUT_ROOT/*/compile_report.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

GiB = 1024**3


def rows(path: Path) -> list[str]:
    report = json.loads(path.read_text())
    run = path.parent.name
    out = []
    for p in report["programs"]:
        out.append(
            f"| {run} | {report['topology']} | {report['mesh']} | {p['name']} | {p['total_bytes'] / GiB:.2f} "
            f"({p['argument_bytes'] / GiB:.2f} + {p['output_bytes'] / GiB:.2f} - {p['alias_bytes'] / GiB:.2f} + "
            f"{p['temp_bytes'] / GiB:.2f} + {p['resident_bytes'] / GiB:.2f}) | {p['hbm_bytes'] / GiB:.0f} | "
            f"{'yes' if p['fits'] else '**no**'} | {p['compiler_flops'] / 1e12:.3g} -> {p['flops'] / 1e12:.3g} | "
            f"{1e3 * p['roofline_s']:.3g} | {p['compile_s']:.0f} |"
        )
    return out


def main(paths: list[str]) -> None:
    print("| run | topology | mesh | program | GiB per chip (args + out - alias + temp + resident) | HBM GiB | fits "
          "| TFLOP per step per chip (XLA -> loop-corrected) | roofline ms | compile s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for path in paths:
        for row in rows(Path(path)):
            print(row)


if __name__ == "__main__":
    main(sys.argv[1:])

"""One Markdown table of the 64 px ablation (benchmarks/ablation_64.sh) from its evaluation outputs.

    python benchmarks/ablation_table.py runs/ablation/eval > docs/ablation-64.md
    python benchmarks/ablation_table.py runs/ablation-hybrids/eval      (item 4's arms)

Per arm and alignment rule at inference: reconstruction, the n sweep's range of the local colour ratio and SWD
Lab, and the acceptance check (the lowest local colour ratio among the n whose structure distance stays below
warp's, against color-transfer's); color-transfer and warp from the same pairs beside them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ARMS = ("paper", "transfer", "transfer-pyramid", "transfer-pyramid-soft", "recipe", "recipe-mixing",
        "recipe-adversarial")


def mean(method: dict, group: str, key: str) -> float:
    return method[group][key]["mean"]


def main(folder: str) -> None:
    rows, baselines = [], None  # warp depends on each model's features; color-transfer does not
    for arm in ARMS:
        for rule in ("mutual", "nearest", "soft"):
            path = Path(folder) / f"{arm}-{rule}" / "results.json"
            if not path.is_file():
                continue
            methods = {m["name"]: m for m in json.loads(path.read_text())["methods"]}
            coat = [m for m in methods.values() if m["family"] == "coat"]
            warp, color = methods["warp"], methods["color-transfer"]
            baselines = baselines or (warp, color)
            ok = [m for m in coat if mean(m, "transfer", "structure_distance") < mean(warp, "transfer", "structure_distance")]
            best = min(ok, key=lambda m: mean(m, "transfer", "local_color")) if ok else None
            colour = [mean(m, "transfer", "local_color") for m in coat]
            lab = [mean(m, "transfer", "swd_lab") for m in coat]
            rows.append(
                f"| {arm} | {rule} | {mean(coat[0], 'reconstruction', 'psnr'):.2f} | "
                f"{mean(coat[0], 'reconstruction', 'lpips'):.3f} | {colour[0]:.3f} → {colour[-1]:.3f} | "
                f"{lab[0]:.2f} → {lab[-1]:.2f} | {mean(warp, 'transfer', 'structure_distance'):.3f} | "
                + (f"n={best['n']}: {mean(best, 'transfer', 'local_color'):.3f} (structure "
                   f"{mean(best, 'transfer', 'structure_distance'):.3f}) | "
                   f"{'yes' if mean(best, 'transfer', 'local_color') < mean(color, 'transfer', 'local_color') else 'no'} |"
                   if best else "none below warp's structure | no |"))
    print("| arm | alignment at inference | rec. PSNR dB ↑ | rec. LPIPS ↓ | local colour ratio, n=0 → n=K | "
          "SWD Lab, n=0 → n=K | warp's structure | best local colour with structure < warp's | "
          "below color-transfer's? |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    if baselines:
        _, color = baselines
        for name, m in (("color-transfer", color),):
            print(f"\n{name}: structure {mean(m, 'transfer', 'structure_distance'):.3f}, local colour ratio "
                  f"{mean(m, 'transfer', 'local_color'):.3f}, SWD Lab {mean(m, 'transfer', 'swd_lab'):.2f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/ablation/eval")

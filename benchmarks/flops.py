"""The paper's cost tables (Tables 2, 3 and 5) next to what mlic's models count.

    python benchmarks/flops.py            # prints the table, writes benchmarks/results/flops.md

GFLOPs are multiply-accumulates (see mlic/flops.py). Each row builds the backbone + head with
random weights (the count does not depend on them) and compares with the paper's figure.
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from mlic.flops import cost_of

EFFV2S, EFFV2L, TRESNET = "tf_efficientnetv2_s", "tf_efficientnetv2_l", "tresnet_l"
# The paper's Query2Label is its authors' port (deep-object-reid ``torchreid/models/q2l.py``):
# feed-forward width = model width = backbone channels, and the 1x1 input projection kept. The
# reference Q2L uses 8192 and no projection.
Q2L_PAPER = {"ff_dim": 1280, "input_projection": True}

# (table, backbone, head, classes, size, head params, paper GFLOPs)
ROWS = [
    ("2 COCO", EFFV2S, "linear", 80, 448, {}, 10.83),
    ("2 COCO", EFFV2S, "ml_gcn", 80, 448, {}, 10.83),
    ("2 COCO", EFFV2S, "query2label", 80, 448, Q2L_PAPER, 16.25),
    ("2 COCO", EFFV2S, "ml_decoder", 80, 448, {}, 12.28),
    ("2 COCO", EFFV2S, "label_graph", 80, 448, {}, 10.83),
    ("2 COCO", EFFV2S, "ml_decoder", 80, 448, {"cosine": True}, 12.28),
    ("2 COCO", EFFV2L, "ml_decoder", 80, 448, {"cosine": True}, 49.92),
    ("2 COCO", TRESNET, "ml_decoder", 80, 448, {"cosine": True}, 36.15),
    ("2 COCO", TRESNET, "ml_decoder", 80, 640, {"cosine": True}, 73.42),
    ("3 VOC", EFFV2S, "ml_decoder", 20, 448, {}, 12.00),
    ("3 VOC", EFFV2S, "query2label", 20, 448, Q2L_PAPER, 15.40),
    ("5 VG500", EFFV2S, "linear", 500, 576, {}, 17.90),
    ("5 VG500", EFFV2S, "query2label", 500, 576, Q2L_PAPER, 32.81),
    ("5 VG500", EFFV2S, "ml_decoder", 500, 576, {}, 20.16),
    ("5 VG500", TRESNET, "ml_decoder", 500, 576, {"cosine": True}, 59.63),
]

# The paper's plain pooled-head (ASL) figure at each size: its total minus this is its head cost.
PAPER_BASELINE = {(EFFV2S, 448): 10.83, (EFFV2S, 576): 17.90}

NOTES = """\
How to read it: "ours" is torch's FlopCounterMode over one forward at batch 1 (convolutions and
matrix products, one MAC = one "FLOP" as the paper counts; element-wise ops not counted), split
into the backbone's part and the head's part. "paper head" is the paper's total minus the paper's
own pooled-head (ASL) row at the same backbone and size, where the paper has one.

- Backbones: EfficientNetV2-S is 5.1% above the paper at 448 and 576 px (11.38 against 10.83,
  18.82 against 17.90); EfficientNetV2-L agrees within 1% (the paper's 49.92 minus its ML-Decoder
  cost). Both within the 7% the counting conventions allow.
- TResNet-L does not agree: timm's `tresnet_l` counts 43.5 GMACs at 448 px, 4x (= (448/224)^2)
  the about 10.9 GFLOPs the TResNet paper gives at 224 px, so our count is consistent with the
  backbone's own publication; the paper's 36.15 (TResNet-L + ML-Decoder) leaves about 35 for the
  backbone, 20% less, at 448, 576 and 640 px alike. We could not find the counting convention
  that gives it and report the difference rather than hide it.
- Totals with a head agree within 5% for every EfficientNetV2 row. The split does not: the paper's
  figures put 1.45 GMACs in ML-Decoder at 80 classes where we count 0.77, and 5.42 in Query2Label
  where we count 4.58. The per-query part agrees (the paper's ML-Decoder grows by 0.28 from 20 to
  80 classes, ours by 0.26), so the difference is a fixed cost the paper's counter gives the head,
  presumably in how it counts the attention projections over the 196 image tokens.
- The label-graph head and ML-GCN cost the same as the plain pooled head (0.000 GMACs of head):
  their graph output does not depend on the image, so at inference it is computed once and cached
  (a warm-up call runs before counting, as in deployment); the paper gives 10.83 for both too.
"""


def _paper_head(backbone: str, size: int, paper_total: float) -> str:
    base = PAPER_BASELINE.get((backbone, size))
    return "-" if base is None else f"{paper_total - base:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "flops.md"))
    parser.add_argument("--quick", action="store_true", help="only the EfficientNetV2-S 448 rows")
    args = parser.parse_args()
    rows = [r for r in ROWS if not args.quick or (r[1] == EFFV2S and r[4] == 448)]
    header = ("| table | backbone | head | classes | px | ours total | ours backbone | ours head "
              "| paper total | paper head | total ours / paper | params (M) |")
    lines = [header, "|" + "---|" * 12]
    started = time.time()
    for table, backbone, head, classes, size, params, paper in rows:
        cost = cost_of(backbone, head, classes, size, params)
        variant = head + (" (cosine)" if params.get("cosine") else "") + (
            " (paper's port)" if params is Q2L_PAPER else "")
        line = (f"| {table} | {backbone} | {variant} | {classes} | {size} | {cost.gmacs_total:.2f} "
                f"| {cost.gmacs_backbone:.2f} | {cost.gmacs_head:.3f} | {paper:.2f} "
                f"| {_paper_head(backbone, size, paper)} | {cost.gmacs_total / paper:.3f} "
                f"| {cost.params_total_m:.1f} |")
        print(line, flush=True)
        lines.append(line)
    text = ("# GFLOPs (multiply-accumulates): the paper's Tables 2, 3 and 5 against mlic\n\n"
            f"Command: `python benchmarks/flops.py`; torch {torch.__version__}, "
            f"{platform.machine()}, {time.time() - started:.0f} s.\n\n" + "\n".join(lines)
            + "\n\n" + NOTES)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text, encoding="utf-8")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()

"""The paper's claims measured on the learned world model, with the world's exact ground truth.

    python benchmarks/world_claims.py --out runs/world-claims                 # the shipped model
    python benchmarks/world_claims.py --quick --out /tmp/claims               # a smoke run (minutes)

Fig. 4: PCK@1 token per layer of intermediate features, post-RoPE Q/K and RoPE-free Q/K, over all object
tokens and over far tokens (displaced by 2+ tokens), with each descriptor's same-position share, at
t=250 and t=500 (same background) and t=250 with another background; baselines: the noisy latents
themselves and the identity flow. Table 2: coarse only / + value warping / + masking on novel subjects
(`vwarper_hooks.world.ablation`), identity and leakage from the world's colours. Writes claims.json,
claims.md, fig4.csv, fig4.png and examples.png to --out; prints claims.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vwarper_hooks.world import LEARNED_MODEL, learned_layers, learned_pipeline
from vwarper_hooks.world.ablation import run_ablation, summary
from vwarper_hooks.world.correspondence import correspondence_table
from vwarper_hooks.world.report import fig4_markdown, plot_fig4, save_fig4_csv, table2_markdown


def record_layers(model: Path, match_layer: int, depth: int) -> None:
    """The paper chose its match layer where RoPE-free Q/K matched best (fig. 4); its warp layers scale with depth."""
    from vwarper_hooks.contract.adapter import proportional_layers

    path = model / "training.json"
    card = json.loads(path.read_text())
    warp = proportional_layers(depth).warp_layers
    card["vwarper"] = {"match_layer": match_layer, "warp_layers": list(warp),
                       "why": "match: the best RoPE-free Q/K layer on far tokens in fig. 4 (t=250, same background); "
                              "warp: the paper's 20-29 of 42 scaled to the depth"}
    path.write_text(json.dumps(card, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(LEARNED_MODEL))
    parser.add_argument("--out", default="runs/world-claims")
    parser.add_argument("--pairs", type=int, default=48, help="pairs per fig. 4 condition")
    parser.add_argument("--subjects", type=int, default=10)
    parser.add_argument("--prompts", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--train-steps", type=int, default=150)
    parser.add_argument("--quick", action="store_true", help="few pairs, 2 subjects x 2 prompts, 20 steps")
    parser.add_argument("--skip-table2", action="store_true")
    parser.add_argument("--record-layers", action="store_true",
                        help="write the match layer chosen from fig. 4 (best RoPE-free Q/K on far tokens, t=250, same "
                             "background) and the proportional warp layers into the model's training.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs, args.subjects, args.prompts, args.steps, args.train_steps = 8, 2, 2, 20, 60
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = learned_pipeline(args.model)
    start = time.time()
    conditions = [(250, True), (500, True), (250, False)]
    tables = [correspondence_table(pipe, args.pairs, t, same) for t, same in tqdm(conditions, desc="fig. 4")]
    lines = [f"# The learned world: paper claims ({time.strftime('%Y-%m-%d')}, model {args.model})", "",
             f"`python benchmarks/world_claims.py {' '.join(argv or sys.argv[1:])}`", "", "## Fig. 4", ""]
    for table in tables:
        lines += [*fig4_markdown(table), ""]
    save_fig4_csv(tables, out / "fig4.csv")
    plot_fig4(tables, out / "fig4.png")
    report: dict = {"fig4": [t.rows() for t in tables], "seconds_fig4": time.time() - start}
    if args.record_layers:
        record_layers(Path(args.model), tables[0].best("qk_ropefree")["layer"], pipe.transformer.config.num_layers)
    if not args.skip_table2:
        layers = learned_layers(Path(args.model))
        bar = tqdm(total=args.subjects * args.prompts, desc="table 2")
        trials = run_ablation(pipe, args.subjects, args.prompts, args.seeds, args.steps, layers,
                              train_steps=args.train_steps, progress=bar.update)
        bar.close()
        rows = summary(trials)
        lines += ["## Table 2", "", f"{args.subjects} novel subjects x {args.prompts} prompts x {args.seeds} seeds, "
                  f"{args.steps} steps, layers {layers or 'adapter defaults'}", "", *table2_markdown(rows), ""]
        report.update(table2=rows, trials=[asdict(t) for t in trials], layers=layers)
    report["seconds"] = time.time() - start
    (out / "claims.json").write_text(json.dumps(report, indent=1))
    (out / "claims.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"({report['seconds']:.0f} s; written to {out})")
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())

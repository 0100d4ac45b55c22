"""ITM against ITC where word order matters: two-object scenes and their swapped captions.

    python benchmarks/bench_itm_word_order.py                     # notebook 07's NegCLIP tower, seeds 0 1 2
    python benchmarks/bench_itm_word_order.py --tower plain --seeds 0
    python benchmarks/bench_itm_word_order.py --steps 800 --itm-weight 1

On one-object ShapesWorld pictures, ITC alone retrieves almost perfectly and ITM re-ranking has
nothing to fix (RESULTS.md, "ITM redesigns"). Here every test picture shows two objects, and its
caption competes with its swapped caption ("a red circle left of a blue star" against "a blue
circle left of a red star"): the same words, so only a model that binds colours to shapes can tell
them apart.

The set-up, at notebook 11's CPU sizes (Q-Former 64 x 2, 8 queries, batch 32, lr 2e-3):

- the frozen image tower and the tokenizer of one of notebook 07's fast-mode pair models ("plain"
  or "negclip", the one fine-tuned with swapped captions as hard negatives), loaded from the runs
  folder, where notebook 07 (or `--checkpoint`) put it;
- the Q-Former started from that model's text tower (``QFormer.init_from_text_encoder``), as
  BLIP-2 starts its Q-Former from BERT's weights; the queries, the cross-attention and the heads
  start fresh;
- stage 1 (ITC + ITM + ITG) on 2,000 training scenes, with each picture's swapped caption as a
  fourth ITM pair (label "no match") beside BLIP-2's three, and the ITM loss weighted by
  ``--itm-weight`` (``train_stage1(..., swapped_negatives=True, itm_weight=...)``).

It prints, per seed, the share of test pictures whose caption scores above its swap (ITC cosine;
ITM log-odds) and recall@1 over the test captions and their swaps together (a hit: the caption of
a scene with the same labels; a swap is never one), for ITC alone and for ITC's top ``--k``
re-ranked by ITM's log-odds.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine  # noqa: E402

from clipedu import blip2 as b2  # noqa: E402
from clipedu.blip2.evaluation import word_order_comparison  # noqa: E402
from clipedu.data import get_dataset  # noqa: E402
from clipedu.runs import model_from_checkpoint, pair_recipes, run_dir  # noqa: E402
from clipedu.runtime import pick_device  # noqa: E402

_PAIR = pair_recipes("fast")[0]  # the run name of notebook 07's fast-mode pair models
TOWERS = {"plain": _PAIR, "negclip": f"{_PAIR}-negclip"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tower", choices=sorted(TOWERS), default="negclip",
                   help="which of notebook 07's pair models gives the frozen tower and the warm start")
    p.add_argument("--checkpoint", type=Path, default=None, help="a pair model's checkpoint.pt instead")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--itm-weight", type=float, default=3.0)
    p.add_argument("--batch-size", type=int, default=None, help="pictures per step (default: the recipe's 32)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the recipe's 2e-3)")
    p.add_argument("--no-warm-start", action="store_true", help="the Q-Former from random weights")
    p.add_argument("--layer", type=int, default=-2, help="which block's outputs the Q-Former reads (-2: BLIP-2's "
                   "second-to-last; -1: the last)")
    p.add_argument("--train-images", type=int, default=2000)
    p.add_argument("--test-images", type=int, default=200)
    p.add_argument("--k", type=int, default=8, help="ITC's shortlist that ITM re-ranks")
    p.add_argument("--device", default=None, help="cuda, cpu, mps (default: the best available)")
    p.add_argument("--threads", type=int, default=None, help="torch threads on the CPU")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    path = args.checkpoint or run_dir("shapes2", TOWERS[args.tower], mode="fast") / "checkpoint.pt"
    if not path.exists():
        raise SystemExit(f"no pair model at {path}: run notebook 07 in fast mode first (CLIPEDU_MODE=fast; it "
                         "trains both pair models into the runs folder), or pass --checkpoint")
    clip, tokenizer, _ = model_from_checkpoint(path, device)
    encoder = b2.FrozenImageEncoder.from_clip(clip, layer=args.layer).to(device)
    recipe = b2.Blip2Recipe.for_mode("fast")
    cfg = recipe.qformer_config(tokenizer, encoder.width)
    train_cfg = replace(recipe.stage1, steps=args.steps, warmup_steps=None,
                        batch_size=args.batch_size or recipe.stage1.batch_size, lr=args.lr or recipe.stage1.lr)
    print(describe_machine(device))
    print(f"tower: {path} | warm start: {not args.no_warm_start} | Q-Former {cfg.layers}x{cfg.width}, "
          f"{cfg.heads} heads, {cfg.num_queries} queries | {args.steps} steps, batch {train_cfg.batch_size}, "
          f"lr {train_cfg.lr:g}, ITM weight {args.itm_weight:g} | {args.train_images} training scenes, "
          f"{args.test_images} test scenes, ITM re-ranks ITC's top {args.k}", flush=True)
    train = get_dataset("shapes2", "train", n=args.train_images)
    test = get_dataset("shapes2", "test", n=args.test_images)
    features = b2.encode_dataset(encoder, train), b2.encode_dataset(encoder, test)

    keys = ("swap ITC", "swap ITM", "i2t ITC", "i2t ITC+ITM", "t2i ITC", "t2i ITC+ITM")
    rows = []
    for seed in args.seeds:
        torch.manual_seed(seed)
        model = b2.Blip2Stage1(cfg, encoder).to(device)
        if not args.no_warm_start:
            model.qformer.init_from_text_encoder(clip.text)
        start = time.perf_counter()
        history = b2.train_stage1(model, features[0], train, tokenizer, replace(train_cfg, seed=seed), device,
                                  progress=False, swapped_negatives=True, itm_weight=args.itm_weight)
        seconds = time.perf_counter() - start
        result = word_order_comparison(model, features[1], test, tokenizer, k=args.k)
        rows.append(f"| {seed} | {seconds:.0f} | {history.last('itm'):.3f} | "
                    + " | ".join(f"{result[k]:.3f}" for k in keys) + " |")
        print(f"  seed {seed}: {seconds:.0f} s, ITM loss {history.last('itm'):.3f}, "
              + ", ".join(f"{k} {result[k]:.3f}" for k in keys), flush=True)

    print("\n| seed | seconds | ITM loss | swap: ITC | swap: ITM | image->text R@1: ITC | ITC+ITM "
          "| text->image R@1: ITC | ITC+ITM |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()

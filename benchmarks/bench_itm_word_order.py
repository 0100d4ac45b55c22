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

With ``--stage2-steps N`` it also asks whether stage 1 gives stage 2 a head start (notebook
18): a tiny LM pretrained on the training captions (``--lm-steps``, the recipe's 1,200 by
default), then stage 2 for N steps twice, from the Q-Former after stage 1 and from the one stage 1
started from, and for each the LM's loss on the test captions (nats per token) and the share of test
pictures whose caption it finds likelier than the swap. ``--stage2-frozen`` keeps both Q-Formers
and their ``ln_vision`` frozen, so stage 2 trains ``lm_proj`` alone: notebook 17's comparison.
"""

from __future__ import annotations

import argparse
import copy
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
    p.add_argument("--stage2-steps", type=int, default=0, help="stage 2 after stage 1 and without it (0: skip)")
    p.add_argument("--stage2-lr", type=float, default=None, help="stage 2 peak lr (default: the recipe's 3e-3)")
    p.add_argument("--stage2-frozen", action="store_true",
                   help="stage 2 with the Q-Former and ln_vision frozen, only lm_proj trained (notebook 17)")
    p.add_argument("--lm-steps", type=int, default=None, help="the LM's pretraining steps (default: the recipe's)")
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

    keys = ("swap ITC", "swap ITM", "i2t ITC", "i2t ITC+ITM", "i2t word order ITC", "i2t word order ITC+ITM",
            "t2i ITC", "t2i ITC+ITM")
    lm = None
    if args.stage2_steps:
        lm_cfg = replace(recipe.lm, steps=args.lm_steps or recipe.lm.steps, warmup_steps=None)
        torch.manual_seed(0)
        lm = b2.TinyLM(recipe.lm_config(tokenizer)).to(device)
        b2.pretrain_language_model(lm, tokenizer, train, lm_cfg, device, progress=False)
        stage2_cfg = replace(recipe.stage2, steps=args.stage2_steps, lr=args.stage2_lr or recipe.stage2.lr,
                             warmup_steps=min(recipe.stage2.warmup_steps, args.stage2_steps // 10))
        keys += ("s2 loss after", "s2 loss without", "s2 swap after", "s2 swap without")
    rows = []
    for seed in args.seeds:
        torch.manual_seed(seed)
        model = b2.Blip2Stage1(cfg, encoder).to(device)
        if not args.no_warm_start:
            model.qformer.init_from_text_encoder(clip.text)
        start_qformer = copy.deepcopy(model.qformer)
        start = time.perf_counter()
        history = b2.train_stage1(model, features[0], train, tokenizer, replace(train_cfg, seed=seed), device,
                                  progress=False, swapped_negatives=True, itm_weight=args.itm_weight)
        seconds = time.perf_counter() - start
        result = word_order_comparison(model, features[1], test, tokenizer, k=args.k)
        if lm is not None:
            starts = {"after": (model.qformer, model.ln_vision),
                      "without": (start_qformer, torch.nn.LayerNorm(encoder.width))}
            compared = b2.stage2_from_starts(starts, lm, encoder, features[0], train, features[1], test, tokenizer,
                                             replace(stage2_cfg, seed=seed), device,
                                             train_qformer=not args.stage2_frozen)
            for name, (_, scores) in compared.items():
                result.update({f"s2 loss {name}": scores["loss"], f"s2 swap {name}": scores["swap"]})
        rows.append(f"| {seed} | {seconds:.0f} | {history.last('itm'):.3f} | "
                    + " | ".join(f"{result[k]:.3f}" for k in keys) + " |")
        print(f"  seed {seed}: {seconds:.0f} s, ITM loss {history.last('itm'):.3f}, "
              + ", ".join(f"{k} {result[k]:.3f}" for k in keys), flush=True)

    extra = " stage-2 test loss: after stage 1 | without | stage-2 swap: after | without |" if lm is not None else ""
    print("\n| seed | seconds | ITM loss | swap: ITC | swap: ITM | image->text R@1: ITC | ITC+ITM "
          "| first text its words, wrong order: ITC | ITC+ITM | text->image R@1: ITC | ITC+ITM |" + extra)
    print("| ---: " * (len(keys) + 3) + "|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()

"""BLIP-2 at teaching scale: train the whole recipe, then measure captions and retrieval.

    python benchmarks/bench_blip2.py --device cuda            # full mode: the notebook's GPU recipe
    python benchmarks/bench_blip2.py --fast                   # fast mode: the CPU recipe of CI
    python benchmarks/bench_blip2.py --fast --stage1-steps 600 --stage2-steps 600 --lm-steps 1500

Steps: the course's mini-CLIP (train-or-load, as notebook 06), its image tower frozen; the tiny LM
pretrained on caption text and frozen; stage 1 (ITC + ITM + ITG); stage 2 (soft prompt into the
frozen LM). Then it prints, with the machine it ran on:

- how well the frozen LM reads its context (the caption it writes after another caption of the
  same picture names the same attributes);
- the attribute accuracy of generated captions (greedy and 3-beam) on test images and on the
  held-out colour-shape pairs no training image showed;
- retrieval recall@1/5 with ITC alone and with ITC then ITM re-ranking (a hit: the attributes match);
- with ``--baseline``: stage 2 without stage 1; with ``--sweep``: the number of queries.

Targets (full mode): shape and colour right in >= 90% of test captions; ITC+ITM R@1 > ITC R@1.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine  # noqa: E402

from clipedu import blip2 as b2  # noqa: E402
from clipedu.data import get_dataset  # noqa: E402
from clipedu.runs import train_or_load  # noqa: E402
from clipedu.runtime import pick_device, seed_everything  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fast", action="store_true", help="the fast-mode (CPU) recipe")
    p.add_argument("--device", default=None, help="cuda, cpu, mps (default: the best available)")
    p.add_argument("--encoder", choices=("auto", "fast", "full"), default="auto",
                   help="which mini-CLIP run to freeze (default: the recipe's mode)")
    for name in ("lm-steps", "stage1-steps", "stage2-steps", "batch-size", "train-images", "test-images",
                 "qformer-width", "qformer-layers", "lm-width", "lm-layers", "num-queries"):
        p.add_argument(f"--{name}", type=int, default=None)
    p.add_argument("--baseline", action="store_true", help="also train stage 2 without stage 1")
    p.add_argument("--sweep", action="store_true", help="also sweep the number of queries")
    p.add_argument("--threads", type=int, default=None, help="torch threads on the CPU")
    return p.parse_args(argv)


def recipe_from(args) -> b2.Blip2Recipe:
    recipe = b2.Blip2Recipe.for_mode(args.fast)
    sizes = {"train_images": args.train_images, "test_images": args.test_images,
             "qformer_width": args.qformer_width, "qformer_layers": args.qformer_layers,
             "lm_width": args.lm_width, "lm_layers": args.lm_layers, "num_queries": args.num_queries}
    recipe = replace(recipe, **{k: v for k, v in sizes.items() if v is not None})
    if args.qformer_width is not None:
        recipe = replace(recipe, qformer_heads=max(1, args.qformer_width // 32))
    if args.lm_width is not None and args.lm_width % recipe.lm_heads:  # keep the recipe's heads where they fit
        recipe = replace(recipe, lm_heads=max(1, args.lm_width // 32))
    for stage, steps in (("lm", args.lm_steps), ("stage1", args.stage1_steps), ("stage2", args.stage2_steps)):
        cfg = getattr(recipe, stage)
        if steps is not None:
            cfg = replace(cfg, steps=steps, warmup_steps=None)
        if args.batch_size is not None:
            cfg = replace(cfg, batch_size=args.batch_size)
        recipe = replace(recipe, **{stage: replace(cfg)})  # replace() re-runs the checks
    return recipe


def row(name, values: dict, keys) -> str:
    return f"| {name} | " + " | ".join(f"{100 * values[k]:.1f}" for k in keys) + " |"


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    recipe = recipe_from(args)
    encoder_fast = args.fast if args.encoder == "auto" else args.encoder == "fast"
    print(describe_machine(device))
    print(f"recipe: {'fast' if args.fast else 'full'} | encoder run: {'fast' if encoder_fast else 'full'} | "
          f"Q-Former {recipe.qformer_layers}x{recipe.qformer_width}, {recipe.num_queries} queries | "
          f"LM {recipe.lm_layers}x{recipe.lm_width} | steps LM {recipe.lm.steps}, stage 1 {recipe.stage1.steps}, "
          f"stage 2 {recipe.stage2.steps} | batch {recipe.stage1.batch_size}")
    seconds = {}

    def done(name: str, start: float) -> None:  # one line per stage as it ends: a timeout keeps them
        seconds[name] = time.perf_counter() - start
        print(f"  {name}: {seconds[name]:.1f} s", flush=True)

    start = time.perf_counter()
    run = train_or_load(fast=encoder_fast, device=device, progress=False)
    done("mini-CLIP (train or load)", start)
    tokenizer = run.tokenizer
    seed_everything(0)
    train = get_dataset("shapes", "train", n=recipe.train_images)
    test = get_dataset("shapes", "test", n=recipe.test_images, seed=1000)
    heldout = get_dataset("shapes", "heldout", n=recipe.test_images, seed=1000)
    encoder = b2.FrozenImageEncoder.from_clip(run.model).to(device)
    features = {name: b2.encode_dataset(encoder, d) for name, d in
                (("train", train), ("test", test), ("heldout", heldout))}

    start = time.perf_counter()
    lm = b2.TinyLM(recipe.lm_config(tokenizer)).to(device)
    lm_history = b2.pretrain_language_model(lm, tokenizer, train, recipe.lm, device, progress=False)
    done("tiny LM pretraining", start)
    continued = b2.continue_captions(lm, tokenizer, [c[0] for c in test.captions])
    lm_reads = b2.caption_attribute_accuracy(continued, test)

    start = time.perf_counter()
    stage1 = b2.Blip2Stage1(recipe.qformer_config(tokenizer, encoder.width), encoder).to(device)
    h1 = b2.train_stage1(stage1, features["train"], train, tokenizer, recipe.stage1, device, progress=False)
    done("stage 1", start)
    retrieval = b2.retrieval_comparison(stage1, features["test"], test, tokenizer, k=recipe.retrieval_k)
    print("  after stage 1, R@1 (%) ITC / ITC+ITM: " + ", ".join(
        f"{d} {100 * retrieval['ITC'][f'{d} R@1']:.1f} / {100 * retrieval['ITC+ITM'][f'{d} R@1']:.1f}"
        for d in ("image->text", "text->image")), flush=True)

    start = time.perf_counter()
    captioner = b2.Blip2Captioner.from_stage1(stage1, lm)
    h2 = b2.train_stage2(captioner, features["train"], train, tokenizer, recipe.stage2, device, progress=False)
    done("stage 2", start)

    keys = ("shape", "colour", "size", "position", "shape+colour", "all")
    results = {"test, Q-Former's own ITG decoder (stage 1)":
               b2.caption_attribute_accuracy(b2.generate_captions(stage1, features["test"], tokenizer), test)}
    start = time.perf_counter()
    for split, data in (("test", test), ("heldout pairs", heldout)):
        f = features["test" if split == "test" else "heldout"]
        for beams in (1, 3):
            captions = b2.generate_captions(captioner, f, tokenizer, num_beams=beams)
            results[f"{split}, {'greedy' if beams == 1 else '3 beams'}"] = b2.caption_attribute_accuracy(captions, data)
    done("captioning (4 x N images)", start)
    samples = b2.generate_captions(captioner, features["test"][:3], tokenizer)

    if args.baseline:
        start = time.perf_counter()
        seed_everything(0)
        scratch = b2.Blip2Captioner(b2.QFormer(stage1.cfg), nn.LayerNorm(encoder.width), lm, encoder).to(device)
        h0 = b2.train_stage2(scratch, features["train"], train, tokenizer, recipe.stage2, device, progress=False)
        done("stage 2 without stage 1", start)
        captions = b2.generate_captions(scratch, features["test"], tokenizer)
        results["test, greedy, no stage 1"] = b2.caption_attribute_accuracy(captions, test)

    sweep = []
    if args.sweep:
        start = time.perf_counter()
        for q in recipe.sweep_queries:
            seed_everything(0)
            s1 = b2.Blip2Stage1(recipe.qformer_config(tokenizer, encoder.width, num_queries=q), encoder).to(device)
            b2.train_stage1(s1, features["train"], train, tokenizer,
                            replace(recipe.stage1, steps=recipe.sweep_stage1_steps, warmup_steps=None), device,
                            progress=False)
            r = b2.retrieval_comparison(s1, features["test"], test, tokenizer, k=recipe.retrieval_k)
            acc = b2.caption_attribute_accuracy(b2.generate_captions(s1, features["test"], tokenizer), test)
            sweep.append((q, r["ITC"]["text->image R@1"], r["ITC+ITM"]["text->image R@1"], acc))
        done("query sweep", start)

    print()
    print(f"losses at the end: LM {lm_history.last():.3f} | stage 1 itc {h1.last('itc'):.3f} itm {h1.last('itm'):.3f} "
          f"itg {h1.last('itg'):.3f} (temperature {stage1.temperature:.3f}) | stage 2 {h2.last():.3f}"
          + (f" | stage 2 without stage 1 {h0.last():.3f}" if args.baseline else ""))
    print("\n| stage | seconds |\n| --- | ---: |")
    for name, s in seconds.items():
        print(f"| {name} | {s:.1f} |")
    print("\nAttribute accuracy (%) of captions, parsed with the ShapesWorld grammar")
    print("| captions | " + " | ".join(keys) + " |\n| --- |" + " ---: |" * len(keys))
    print(row("frozen LM after another caption of the same picture (no image)", lm_reads, keys))
    for name, values in results.items():
        print(row(name, values, keys))
    print(f"\n{len(test)} test images; recall (%) where a hit is any item with the same attributes; "
          f"ITM re-ranks the top {recipe.retrieval_k}")
    cols = ("image->text R@1", "image->text R@5", "text->image R@1", "text->image R@5")
    print("| scores | " + " | ".join(cols) + " |\n| --- |" + " ---: |" * len(cols))
    for name, values in retrieval.items():
        print(row(name, values, cols))
    if sweep:
        print(f"\nQuery sweep (stage 1 for {recipe.sweep_stage1_steps} steps; captions by the ITG decoder)")
        print("| queries | ITC t->i R@1 | ITC+ITM t->i R@1 | shape | colour | all |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: |")
        for q, itc, itm, acc in sweep:
            print(f"| {q} | {100 * itc:.1f} | {100 * itm:.1f} | {100 * acc['shape']:.1f} | {100 * acc['colour']:.1f} "
                  f"| {100 * acc['all']:.1f} |")
    print("\nSamples (generated | true):")
    for generated, truth in zip(samples, test.captions[:3]):
        print(f"  {generated!r} | {truth[0]!r}")
    main_acc = results["test, greedy"]  # the frozen LM's captions after stage 2
    itc_r1 = (retrieval["ITC"]["image->text R@1"] + retrieval["ITC"]["text->image R@1"]) / 2
    itm_r1 = (retrieval["ITC+ITM"]["image->text R@1"] + retrieval["ITC+ITM"]["text->image R@1"]) / 2
    print("\nTargets (full mode):")
    for attribute in ("shape", "colour"):
        value = main_acc[attribute]
        print(f"  {attribute} named correctly >= 90%: {100 * value:.1f}% -> {'met' if value >= 0.9 else 'not met'}")
    print(f"  ITC+ITM R@1 > ITC R@1 (mean of both directions): {100 * itm_r1:.1f}% vs {100 * itc_r1:.1f}% -> "
          f"{'met' if itm_r1 > itc_r1 else 'not met'}")


if __name__ == "__main__":
    main()

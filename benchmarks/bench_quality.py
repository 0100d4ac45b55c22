"""How good does the mini-CLIP get in a fixed training time? ShapesWorld, median of seeds.

    python benchmarks/bench_quality.py                      # 120 s and 300 s budgets, 3 seeds each
    python benchmarks/bench_quality.py --budgets 120 --seeds 0
    python benchmarks/bench_quality.py --device cuda --budgets 60

For each budget and seed: the number of steps that fit the budget is measured on this machine
(a short timed run), the tiny preset trains for exactly that many steps with the course recipe, and
the model is evaluated on 1,000 test images and 1,000 held-out-pair images:

- zero-shot top-1 on shape, colour, size and position, and on the held-out colour x shape pairs
  (64-way), with the data's whole-description prompts ("a small red {} in the top left", every
  combination of the other attributes) summed as probabilities, as ``clipedu eval`` reports them;
  ``<attribute>_embedding_mean`` is the CLIP paper's average of prompt embeddings on the same prompts;
- recall@1 image->text and text->image on 1,000 test pairs, strict (the paired caption) and
  lenient (any caption whose attributes all match the image);
- linear probes (frozen features) on shape and position against raw pixels and a random encoder,
  and the few-shot curve (1-16 examples per class) of the probe on shape.

Targets on a 2-core CPU: within 120 s, >= 0.95 on every attribute and >= 0.85 on held-out pairs;
within 300 s, >= 0.98 and >= 0.95.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine  # noqa: E402

from clipedu import CLIP  # noqa: E402
from clipedu.data import ShapesWorld, build_tokenizer  # noqa: E402
from clipedu.evaluate import (  # noqa: E402
    caption_pairs,
    encode_images,
    encode_texts,
    few_shot_curve,
    linear_probe,
    pixel_features,
    retrieval_recall,
    shapes_zero_shot,
)
from clipedu.runs import default_train_config, estimate_steps, new_trainer, with_steps  # noqa: E402
from clipedu.runtime import pick_device  # noqa: E402

ATTRIBUTES = ("shape", "colour", "size", "position")


def run_one(budget: float, seed: int, device, train_size: int, probes: bool) -> dict:
    world = ShapesWorld(seed=seed)
    train = world.generate(train_size, "train")
    test = world.generate(1000, "test", seed=seed + 1000)
    held = world.generate(1000, "heldout", seed=seed + 1000)
    tokenizer = build_tokenizer(train)
    cfg = default_train_config("tiny", fast=False, seed=seed)
    steps = estimate_steps("tiny", train, cfg, device, seconds=budget, tokenizer=tokenizer)
    cfg = with_steps(cfg, steps)  # the recipe cut to the budget, as clipedu train --minutes does
    trainer = new_trainer("tiny", train, cfg, tokenizer=tokenizer, device=device)  # seeded with cfg.seed
    print(f"  budget {budget:.0f} s, seed {seed}: {steps} steps fit, training", flush=True)
    model = trainer.model
    start = time.perf_counter()
    history = trainer.fit(progress=False)
    seconds = time.perf_counter() - start
    model.eval()
    print(f"  budget {budget:.0f} s, seed {seed}: trained in {seconds:.0f} s, evaluating", flush=True)

    out = {"steps": cfg.steps, "seconds": seconds, "final_loss": history.loss[-1]}
    image_embeds = encode_images(model, test)
    out.update(shapes_zero_shot(model, tokenizer, test, held, test_embeds=image_embeds))
    texts, owner = caption_pairs(test)
    text_embeds = encode_texts(model, tokenizer, texts)
    strict = retrieval_recall(image_embeds, text_embeds, owner, ks=(1,))
    same = torch.ones(len(test), len(texts), dtype=torch.bool)
    for attribute in ATTRIBUTES:
        labels = test.labels[attribute]
        same &= labels[:, None] == labels[owner][None, :]
    lenient = retrieval_recall(image_embeds, text_embeds, owner, ks=(1,), relevant=same)
    out["i2t_R@1"], out["t2i_R@1"] = strict["image_to_text_R@1"], strict["text_to_image_R@1"]
    out["i2t_R@1_lenient"], out["t2i_R@1_lenient"] = lenient["image_to_text_R@1"], lenient["text_to_image_R@1"]

    if probes:
        probe_train = world.generate(2000, "train", seed=seed + 2000)
        torch.manual_seed(seed + 1)
        random_model = CLIP(model.cfg).eval()
        feats = {
            "clip": (encode_images(model, probe_train, features=True), encode_images(model, test, features=True)),
            "random": (encode_images(random_model, probe_train, features=True),
                       encode_images(random_model, test, features=True)),
            "pixels": (pixel_features(probe_train), pixel_features(test)),
        }
        for attribute in ("shape", "position"):
            for name, (tr, te) in feats.items():
                result = linear_probe(tr, probe_train.labels[attribute], te, test.labels[attribute])
                out[f"probe_{attribute}_{name}"] = result.accuracy
        curve = few_shot_curve(feats["clip"][0], probe_train.labels["shape"], feats["clip"][1],
                               test.labels["shape"], repeats=2)
        out["few_shot_shape"] = {k: round(v[0], 3) for k, v in curve.items()}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budgets", type=float, nargs="+", default=[120, 300], help="training seconds")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--train-size", type=int, default=20000)
    ap.add_argument("--no-probes", action="store_true", help="skip the linear probes (faster)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    warnings.simplefilter("ignore", UserWarning)
    print(describe_machine(device))
    print(f"tiny preset, ShapesWorld 32x32 one object, {args.train_size} training images, seeds {args.seeds}\n")

    zero_shot_keys = [*ATTRIBUTES, "heldout_pairs"]
    keys = ["steps", "seconds", "final_loss", *zero_shot_keys, *(f"{k}_embedding_mean" for k in zero_shot_keys),
            "i2t_R@1", "t2i_R@1", "i2t_R@1_lenient", "t2i_R@1_lenient"]
    if not args.no_probes:
        keys += [f"probe_{a}_{n}" for a in ("shape", "position") for n in ("clip", "random", "pixels")]
    for budget in args.budgets:
        results = []
        for seed in args.seeds:
            results.append(run_one(budget, seed, device, args.train_size, not args.no_probes))
            print(f"  budget {budget:.0f} s, seed {seed}: " + ", ".join(
                f"{k} {results[-1][k]:.3f}" for k in (*ATTRIBUTES, "heldout_pairs")), flush=True)
        print(f"\n### budget {budget:.0f} s of training\n")
        print("| metric | median | min | " + " | ".join(f"seed {s}" for s in args.seeds) + " |")
        print("| --- | ---: | ---: | " + " | ".join("---:" for _ in args.seeds) + " |")
        for key in keys:
            values = [r[key] for r in results]
            fmt = "{:.0f}" if key in ("steps", "seconds") else "{:.3f}"
            cells = " | ".join(fmt.format(v) for v in values)
            print(f"| {key} | {fmt.format(statistics.median(values))} | {fmt.format(min(values))} | {cells} |")
        if not args.no_probes:
            for seed, r in zip(args.seeds, results):
                print(f"few-shot probe on shape, seed {seed} (k examples per class -> accuracy): {r['few_shot_shape']}")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())

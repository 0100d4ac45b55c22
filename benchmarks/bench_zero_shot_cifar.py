"""Zero-shot CIFAR-10 with OpenAI's released CLIP loaded into clipedu's own model.

    python benchmarks/bench_zero_shot_cifar.py [--model ViT-B/32] [--limit N] [--device cuda]
                                              [--batch-size 500] [--open-clip]

The CLIP paper's protocol: each 32 x 32 test photo is scaled up to the model's 224 x 224 (bicubic,
:mod:`clipedu.preprocess`), each class is the mean of its 18 prompt embeddings
(``clipedu.data.CIFAR_TEMPLATES``), and a photo gets the class it is most similar to. open_clip's
published figure for ViT-B/32 (OpenAI's weights) is 89.83% top-1; clipedu's should be within a point.

Full test set (10,000 photos) on a GPU: about a minute once the weights (340 MB) and CIFAR-10
(170 MB) are downloaded. On a CPU use ``--limit`` (about 0.2 s a photo on 2 cores).
``--open-clip`` also scores open_clip's own model, preprocessing and tokenizer on the same photos,
for a side-by-side check. Needs the network the first time; offline it stops with a clear message.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine  # noqa: E402

from clipedu.bpe import BPETokenizer  # noqa: E402
from clipedu.data import CIFAR_TEMPLATES, cifar10  # noqa: E402
from clipedu.evaluate import topk_accuracy  # noqa: E402
from clipedu.pretrained import WeightsUnavailableError, encode_photos, encode_prompts, load_openai  # noqa: E402
from clipedu.runtime import pick_device  # noqa: E402

# CIFAR-10 top-1 of OpenAI's weights in open_clip's table (docs/openclip_classification_results.csv).
PUBLISHED = {"ViT-B/32": 0.8983, "ViT-B/16": 0.9077, "ViT-L/14": 0.9559, "ViT-L/14@336px": 0.9493}


def clipedu_scores(model, tokenizer, images, class_names, batch_size):
    prompts = [t.format(name) for name in class_names for t in CIFAR_TEMPLATES]  # class-major
    text = encode_prompts(model, tokenizer, prompts).view(len(class_names), len(CIFAR_TEMPLATES), -1)
    weights = F.normalize(text.mean(dim=1), dim=-1)  # (K, E): the prompt ensemble
    return encode_photos(model, images, batch_size=batch_size) @ weights.t()  # (N, K)


@torch.no_grad()
def open_clip_scores(name, images, class_names, device, batch_size):
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(
        name.replace("/", "-"), pretrained="openai", device=device, force_quick_gelu=True
    )
    tokenizer = open_clip.get_tokenizer(name.replace("/", "-"))
    model.eval()
    prompts = [t.format(c) for c in class_names for t in CIFAR_TEMPLATES]
    text = model.encode_text(tokenizer(prompts).to(device), normalize=True).float().cpu()
    weights = F.normalize(text.view(len(class_names), len(CIFAR_TEMPLATES), -1).mean(1), dim=-1)
    from PIL import Image

    out = []
    for start in range(0, len(images), batch_size):
        batch = torch.stack([preprocess(Image.fromarray(im.permute(1, 2, 0).numpy()))
                             for im in images[start : start + batch_size]])
        out.append(model.encode_image(batch.to(device), normalize=True).float().cpu())
    return torch.cat(out) @ weights.t()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="ViT-B/32")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N test photos")
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--open-clip", action="store_true", help="also score open_clip's own model")
    args = parser.parse_args(argv)
    device = pick_device(args.device)

    try:
        model = load_openai(args.model, device=device)
        data = cifar10(train=False)
    except (WeightsUnavailableError, RuntimeError, FileNotFoundError) as err:
        print(f"cannot run offline: {err}", file=sys.stderr)
        return 2
    tokenizer = BPETokenizer()
    images, labels = data.images, data.labels["class"]
    if args.limit is not None:
        images, labels = images[: args.limit], labels[: args.limit]
    class_names = data.class_names["class"]

    print(describe_machine(device))
    rows = []
    start = time.perf_counter()
    scores = clipedu_scores(model, tokenizer, images, class_names, args.batch_size)
    rows.append(("clipedu CLIP", topk_accuracy(scores, labels), time.perf_counter() - start))
    if args.open_clip:
        start = time.perf_counter()
        scores = open_clip_scores(args.model, images, class_names, device, args.batch_size)
        rows.append(("open_clip CLIP", topk_accuracy(scores, labels), time.perf_counter() - start))

    print(f"\nZero-shot CIFAR-10, {args.model} (OpenAI weights), {len(images)} test photos, "
          f"{len(CIFAR_TEMPLATES)} templates per class")
    print("| model | top-1 | top-5 | seconds |\n| --- | --- | --- | --- |")
    for name, acc, seconds in rows:
        print(f"| {name} | {100 * acc['top1']:.2f}% | {100 * acc['top5']:.2f}% | {seconds:.1f} |")
    if args.model in PUBLISHED:
        print(f"published (open_clip's table, full test set): {100 * PUBLISHED[args.model]:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())

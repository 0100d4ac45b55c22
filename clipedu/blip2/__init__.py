"""BLIP-2 at teaching scale (notebook 11): a frozen image encoder and a frozen language model,
bridged by a small trainable Q-Former.

    image -> frozen ViT (second-to-last layer, every token) -> ln_vision
          -> Q-Former: Q learned queries cross-attend to the image tokens
          -> stage 1: ITC, ITM and ITG losses against captions (three attention masks)
          -> stage 2: lm_proj -> soft prompt -> frozen tiny LM writes the caption

Modules, in the order the notebook builds them:

- :mod:`~clipedu.blip2.masks`: the unimodal, bidirectional and multimodal-causal masks.
- :mod:`~clipedu.blip2.qformer`: ``QFormerConfig``, ``QFormer`` (queries + text, shared self-attention).
- :mod:`~clipedu.blip2.frozen`: ``FrozenImageEncoder``, ``freeze_``, ``count_parameters``.
- :mod:`~clipedu.blip2.objectives`: ``Blip2Stage1`` and the ITC / ITM / ITG pieces.
- :mod:`~clipedu.blip2.language_model`: ``TinyLM``, the frozen decoder-only LM.
- :mod:`~clipedu.blip2.captioning`: ``Blip2Captioner`` (stage 2), greedy and beam decoding.
- :mod:`~clipedu.blip2.training`: the LM, stage 1 and stage 2 in the course's loop.
- :mod:`~clipedu.blip2.evaluation`: caption attribute accuracy, ITC and ITC+ITM retrieval, a caption
  against its swap (notebook 17).
"""

from clipedu.blip2.captioning import Blip2Captioner, beam_search, greedy_decode
from clipedu.blip2.evaluation import (
    caption_attribute_accuracy,
    captioner_word_order,
    continue_captions,
    generate_captions,
    itc_similarities,
    itm_rerank,
    recall_at_k,
    retrieval_comparison,
    stage2_from_starts,
    swap_margins,
    swap_relevance,
    word_order_comparison,
    word_order_mistakes,
)
from clipedu.blip2.frozen import FrozenImageEncoder, count_parameters, freeze_
from clipedu.blip2.language_model import LMConfig, TinyLM, caption_labels, lm_loss, loss_without_picture, sample_text
from clipedu.blip2.masks import (
    bidirectional_mask,
    multimodal_causal_mask,
    objective_mask,
    unimodal_mask,
    with_text_padding,
)
from clipedu.blip2.objectives import (
    Blip2Stage1,
    Stage1Output,
    decoder_inputs,
    duplicate_caption_positives,
    itc_loss,
    itm_batch,
    itm_floor,
    positives_from_keys,
    query_text_similarity,
    sample_hard_negatives,
)
from clipedu.blip2.qformer import QFormer, QFormerConfig, QFormerOutput
from clipedu.blip2.training import (
    Blip2Recipe,
    LanguageModelPretraining,
    Stage1Training,
    Stage2Training,
    WordOrderStage1,
    attribute_keys,
    encode_dataset,
    pretrain_language_model,
    stage_config,
    train_stage1,
    train_stage2,
    word_order_stage1,
)

__all__ = [
    "Blip2Captioner", "Blip2Recipe", "Blip2Stage1", "FrozenImageEncoder", "LMConfig", "LanguageModelPretraining",
    "QFormer", "QFormerConfig", "QFormerOutput", "Stage1Output", "Stage1Training", "Stage2Training", "TinyLM",
    "attribute_keys", "beam_search",
    "bidirectional_mask", "caption_attribute_accuracy", "caption_labels", "captioner_word_order", "continue_captions",
    "count_parameters",
    "decoder_inputs",
    "duplicate_caption_positives", "encode_dataset", "freeze_", "generate_captions", "greedy_decode",
    "itc_loss", "itc_similarities", "itm_batch", "itm_floor", "itm_rerank", "lm_loss", "loss_without_picture",
    "multimodal_causal_mask",
    "objective_mask", "positives_from_keys", "pretrain_language_model", "query_text_similarity", "recall_at_k",
    "retrieval_comparison", "sample_hard_negatives", "sample_text", "stage2_from_starts", "stage_config",
    "train_stage1", "train_stage2",
    "swap_margins", "swap_relevance", "unimodal_mask", "with_text_padding", "word_order_comparison",
    "word_order_mistakes", "WordOrderStage1", "word_order_stage1",
]

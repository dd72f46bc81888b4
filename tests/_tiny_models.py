"""A tiny randomly initialised BERT sequence classifier and tokenizer, built offline for tests."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

__all__ = ["TINY_LABELS", "build_tiny_classifier"]

TINY_LABELS = ("NEG", "NEU", "POS")
_WORDS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "good", "bad", "ok", "the", "food", "was")


def build_tiny_classifier(folder: Path, favoured_label: int) -> Path:
    """Save a 1-layer BERT classifier whose output always favours ``favoured_label``.

    Args:
        folder: Where to save the model and tokenizer.
        favoured_label: Index into ``TINY_LABELS`` given a large classifier bias.

    Returns:
        ``folder``.
    """
    vocab = {word: index for index, word in enumerate(_WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    )
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=3,
        id2label=dict(enumerate(TINY_LABELS)),
        label2id={label: index for index, label in enumerate(TINY_LABELS)},
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
        model.classifier.bias[favoured_label] = 5.0
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder

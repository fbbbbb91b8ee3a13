"""A byte-level BPE tokenizer trained with the `tokenizers` library on our own text.

No download: the training text is ours (the tasks' corpus, or the built-in sample below). Digits
are always single tokens, so arithmetic is learned digit by digit, and byte-level pre-tokenizing
means any string encodes. The result is a `PreTrainedTokenizerFast` that `save_pretrained` writes
next to the model and `AutoTokenizer.from_pretrained` reads back.

    tok = build_tokenizer(["12+34=46", "hello"], vocab_size=512)
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"

# Built-in text so a tokenizer can be made with no task at hand: arithmetic, JSON proposals and
# the plain English the researcher reads and writes.
_SAMPLE = [
    "Q: 123 + 45 = ? A: 168",
    "Compute 7 * 8. Answer: 56",
    "What is 1000 - 1? 999",
    '{"hypothesis": "lower the temperature", "edits": [{"knob": "sampling.temperature", "value": 0.7}]}',
    '{"file": "reward.py", "search": "return 0.0", "replace": "return 1.0"}',
    "The accuracy rose from 0.42 to 0.47; the interval [0.01, 0.09] is above the noise floor. Keep.",
    "Reach the target 24 with the numbers 3 4 6 1 using + - * / and parentheses: (6 - 3 + 1) * 4",
    "The researcher analyzes failed runs, proposes a change, evaluates it and keeps or reverts it.",
]


def build_tokenizer(texts: Iterable[str] | None = None, *, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer of at most `vocab_size` tokens on `texts`."""
    if vocab_size < 300:
        raise ValueError(f"vocab_size={vocab_size} is too small: the byte alphabet alone has 256 tokens")
    corpus = list(texts) if texts is not None else []
    corpus += _SAMPLE

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        padding_side="left",
        model_max_length=1024,
    )

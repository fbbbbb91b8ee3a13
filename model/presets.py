"""MiniMax-M2-family presets on `transformers`' own `MiniMaxM2ForCausalLM`, and their loading.

The architecture is the library's (sigmoid router with score-correction bias, renormalized
top-k, GQA, partial rotary, qk-norm); a preset only picks sizes. M2 itself routes each token to
8 of 256 experts; the presets keep that shape of "many small experts, few active" at a size that
trains on two CPU cores.

    from model import build_policy, load_policy
    policy = build_policy("tiny", tokenizer)       # fresh weights, our experts kernel
    policy = load_policy("runs/models/base")       # a saved checkpoint, our experts kernel
    policy = load_policy(path, device=default_device())   # on the GPU where there is one
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, MiniMaxM2Config, MiniMaxM2ForCausalLM

from model.experts import EXPERTS_IMPL

PRESETS: dict[str, dict] = {
    # ~0.2M parameters: 2 layers, 8 experts of width 32, 2 active per token. The same architecture
    # at a size where a GRPO step or an evaluation takes a fraction of a second: for tests and
    # smoke runs of the loop, where what is under test is not the policy's skill.
    "micro": dict(
        hidden_size=64,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        num_local_experts=8,
        num_experts_per_tok=2,
        max_position_embeddings=1024,
    ),
    # ~13.6M parameters: 4 layers, 32 experts of width 128, 4 active per token.
    "tiny": dict(
        hidden_size=256,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        num_local_experts=32,
        num_experts_per_tok=4,
        max_position_embeddings=1024,
    ),
    # ~110M parameters: 8 layers, 64 experts of width 256, 8 active per token.
    "small": dict(
        hidden_size=512,
        intermediate_size=256,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=64,
        num_local_experts=64,
        num_experts_per_tok=8,
        max_position_embeddings=2048,
    ),
}

# M2 rotates half of each head (rotary_dim 64 of head_dim 128).
_ROPE = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}


def preset_config(preset: str, vocab_size: int, *, bos_token_id: int, eos_token_id: int,
                  pad_token_id: int, experts_implementation: str = EXPERTS_IMPL) -> MiniMaxM2Config:
    """The `MiniMaxM2Config` of a named preset for a tokenizer of `vocab_size` tokens."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of: {', '.join(sorted(PRESETS))}")
    return MiniMaxM2Config(
        vocab_size=vocab_size,
        rope_parameters=dict(_ROPE),
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        tie_word_embeddings=False,
        experts_implementation=experts_implementation,
        **PRESETS[preset],
    )


def build_policy(preset: str, tokenizer, *, seed: int = 0,
                 experts_implementation: str = EXPERTS_IMPL) -> MiniMaxM2ForCausalLM:
    """A freshly initialized policy of `preset` sized for `tokenizer`, in fp32 on the CPU."""
    config = preset_config(
        preset,
        len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        experts_implementation=experts_implementation,
    )
    torch.manual_seed(seed)
    policy = MiniMaxM2ForCausalLM(config)
    policy.generation_config.pad_token_id = tokenizer.pad_token_id
    return policy.eval()


def default_device() -> str:
    """"cuda" where a GPU is visible, else "cpu": where training, rollouts and evaluation run.
    `CUDA_VISIBLE_DEVICES=` (empty) keeps a GPU machine on the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_checkpoint(path: Path) -> None:
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint folder {str(path)!r} does not exist")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"checkpoint folder {str(path)!r} has no config.json")
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"checkpoint folder {str(path)!r} has no tokenizer (tokenizer.json missing)")


def load_tokenizer(path: str | Path):
    """The tokenizer saved with a checkpoint."""
    path = Path(path)
    _check_checkpoint(path)
    return AutoTokenizer.from_pretrained(str(path))


def load_policy(path: str | Path, *, experts_implementation: str = EXPERTS_IMPL,
                dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> MiniMaxM2ForCausalLM:
    """A saved checkpoint, with our experts kernel (the library would default to `grouped_mm`),
    on `device` (the CPU unless asked: callers that build their inputs on the CPU stay correct)."""
    path = Path(path)
    _check_checkpoint(path)
    policy = AutoModelForCausalLM.from_pretrained(
        str(path), experts_implementation=experts_implementation, dtype=dtype
    )
    if not isinstance(policy, MiniMaxM2ForCausalLM):
        raise ValueError(f"{str(path)!r} holds a {type(policy).__name__}, not a MiniMaxM2ForCausalLM")
    return policy.to(device).eval()


def save_policy(policy, tokenizer, path: str | Path) -> Path:
    """Save weights, config and tokenizer together so the folder loads on its own."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    policy.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path

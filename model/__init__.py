"""The local policy: MiniMax-M2-family presets, our tokenizer, the kernelized experts and fast rollouts.

Importing this package registers our experts implementation (`EXPERTS_IMPL`) in `transformers`'
`ExpertsInterface`; `build_policy` and `load_policy` select it.
"""

from model.experts import EXPERTS_IMPL  # registers the kernel on import
from model.presets import PRESETS, build_policy, default_device, load_policy, load_tokenizer, save_policy
from model.tokenizer import build_tokenizer

__all__ = ["EXPERTS_IMPL", "PRESETS", "build_policy", "build_tokenizer", "default_device", "load_policy",
           "load_tokenizer", "save_policy"]

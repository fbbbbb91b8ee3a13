"""The local policy: MiniMax-M2-family presets, our tokenizer, the kernelized experts and fast rollouts.

Importing this package registers our experts implementation (`EXPERTS_IMPL`) in `transformers`'
`ExpertsInterface`; `build_policy` and `load_policy` select it.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from model.experts import EXPERTS_IMPL  # noqa: E402  (registers the kernel on import)
from model.presets import PRESETS, build_policy, default_device, load_policy, load_tokenizer, save_policy  # noqa: E402
from model.tokenizer import build_tokenizer  # noqa: E402

__all__ = ["EXPERTS_IMPL", "PRESETS", "build_policy", "build_tokenizer", "default_device", "load_policy",
           "load_tokenizer", "save_policy"]

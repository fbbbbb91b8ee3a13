"""Test-wide environment, set before anything imports torch, transformers or mlflow."""

from rl_pipeline.env import use_offline_env

use_offline_env()

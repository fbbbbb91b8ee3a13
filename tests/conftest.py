"""Test-wide environment, set before anything imports torch, transformers or mlflow."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

"""`researcher serve`: a local checkpoint behind an OpenAI-compatible HTTP API.

    schemas.py   request bodies (strict pydantic) and OpenAI's error body
    engine.py    the loaded checkpoint, the batcher thread, the chat template
    app.py       the FastAPI app: /v1/models, /v1/chat/completions, /v1/completions, /v1/stats
    launch.py    `served(...)`: the server in a child process, for tests and benchmarks

`served` is importable from here without loading torch or FastAPI; `create_app` lives in
`serving.app`.
"""

from serving.launch import ServerFailed, served

__all__ = ["ServerFailed", "served"]

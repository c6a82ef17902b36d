"""The embedded language model's own process: ``python -m cloud.orchestrator.llama_worker MODEL.gguf THREADS``.

Why a process: llama.cpp keeps the CPU for seconds per answer and cannot be interrupted, and llama-cpp-python
silences its loading by pointing the whole process's stdout and stderr at /dev/null for a moment, which in the
hub would swallow other threads' log lines. Here a slow answer is ended by killing the process, and its output
games touch nobody else.

Protocol: after loading, one line ``{"ready": true}``; then for each request line
``{"messages": [...], "schema": {...}, "max_tokens": N}`` one answer line ``{"content": "..."}`` or
``{"error": "..."}``, on the stdout the process was started with (llama.cpp's own printing goes to stderr).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

CONTEXT_TOKENS = 4096


def serve(model_path: str, threads: int) -> int:
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything printed from here on goes to stderr, never into the answers
    from llama_cpp import Llama, LlamaGrammar

    llama = Llama(model_path=model_path, n_ctx=CONTEXT_TOKENS, n_threads=threads, seed=0, verbose=False)
    grammars: dict[str, Any] = {}
    answers.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        try:
            request = json.loads(line)
            schema = json.dumps(request["schema"], sort_keys=True)
            if schema not in grammars:
                grammars[schema] = LlamaGrammar.from_json_schema(schema, verbose=False)
            reply = llama.create_chat_completion(
                messages=request["messages"],
                grammar=grammars[schema],
                temperature=0.0,
                max_tokens=int(request["max_tokens"]),
            )
            content = reply["choices"][0]["message"]["content"]  # type: ignore[index]  # not streamed: a dict
            answers.write(json.dumps({"content": content or ""}) + "\n")
        except Exception as exc:  # one bad request must not end the process: say what went wrong
            answers.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(serve(sys.argv[1], int(sys.argv[2])))

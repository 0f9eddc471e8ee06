"""A small OpenAI-compatible server for runtime `openai`'s fault tests (stdlib only; the real-server tests use
llama-cpp-python's). `python tests/fake_openai_server.py --port P [--host H] [--mode MODE] [--model NAME]
[--die-after N] [--once FILE] [--checkpoint DIR] [--api-key KEY] [--key-env NAME]`.

Modes: ok (echo log-probabilities, streaming), no-echo (answers without prompt log-probabilities), http500 /
http429 (every completion fails with that status), slow (completions sleep 30 s). `--die-after N` exits hard on the N-th completion
request; with `--once FILE` only the first launch does (it creates FILE), so a sweep's next server is healthy.
Like servers that log their configuration, it prints its arguments (`--api-key` included) and the key it takes
from `--key-env`'s variable, which every request must then send as `Authorization: Bearer KEY` (else 401).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ARGS = argparse.Namespace()
COUNT = [0]


def _logprob(word: str) -> float:
    return -1.0 - int(hashlib.sha256(word.encode()).hexdigest()[:4], 16) / 65536.0


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # quiet
        return

    def _json(self, code: int, doc: object) -> None:
        body = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _authorized(self) -> bool:
        if ARGS.key_env and self.headers.get("Authorization") != f"Bearer {os.environ.get(ARGS.key_env)}":
            self._json(401, {"error": "invalid api key"})
            return False
        return True

    def do_GET(self) -> None:  # noqa: N802
        if not self._authorized():
            return
        if self.path == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": ARGS.model, "object": "model"}]})
        elif self.path == "/version":
            self._json(200, {"version": "fake-1.0"})
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self) -> None:  # noqa: N802
        req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if not self._authorized():
            return
        if self.path != "/v1/completions":
            self._json(404, {"error": "not found"})
            return
        COUNT[0] += 1
        if ARGS.die_after and COUNT[0] >= ARGS.die_after:
            os._exit(9)
        if ARGS.mode in ("http500", "http429"):
            code = int(ARGS.mode[4:])
            self._json(code, {"error": "engine overloaded" if code == 500 else "rate limited"})
            return
        if ARGS.mode == "slow":
            time.sleep(30)
        if req.get("model") != ARGS.model:
            self._json(404, {"error": f"model {req.get('model')!r} not found"})
            return
        if req.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for _ in range(int(req.get("max_tokens", 8))):
                time.sleep(0.005)
                self.wfile.write(b'data: {"choices": [{"index": 0, "text": " x"}]}\n\n')
                self.wfile.flush()
            usage = {"prompt_tokens": 8, "completion_tokens": int(req.get("max_tokens", 8))}
            self.wfile.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
            return
        prompt = req.get("prompt")
        prompts = prompt if isinstance(prompt, list) else [prompt]
        choices = []
        for i, text in enumerate(prompts):
            words = str(text).split(" ") + ["<gen>"]
            if ARGS.mode == "no-echo":
                choices.append({"index": i, "text": "x", "logprobs": None})
                continue
            lps = [None] + [_logprob(w) for w in words[1:]]
            tops = [None] + [{w: lp} for w, lp in zip(words[1:], lps[1:])]
            choices.append(
                {"index": i, "text": "x", "logprobs": {"tokens": words, "token_logprobs": lps, "top_logprobs": tops}}
            )
        self._json(200, {"object": "text_completion", "model": ARGS.model, "choices": choices})


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--mode", default="ok", choices=["ok", "no-echo", "http500", "http429", "slow"])
    p.add_argument("--model", default="fake-model")
    p.add_argument("--die-after", type=int, default=0)
    p.add_argument("--once", default=None)
    p.add_argument("--checkpoint", default=None, help="a folder that must hold config.json and shrinkgate.json")
    p.add_argument("--api-key", default=None)
    p.add_argument("--key-env", default=None, help="environment variable holding the key every request must send")
    p.parse_args(namespace=ARGS)
    if ARGS.api_key or ARGS.key_env:
        print(f"non-default args: {vars(ARGS)}", flush=True)
        print(f"api key from ${ARGS.key_env}: {os.environ.get(ARGS.key_env or '', '')}", flush=True)
    if ARGS.checkpoint and not all((Path(ARGS.checkpoint) / f).is_file() for f in ("config.json", "shrinkgate.json")):
        raise SystemExit(4)
    if ARGS.once:
        marker = Path(ARGS.once)
        if marker.exists():
            ARGS.die_after = 0
        else:
            marker.write_text("launched")
    if ARGS.mode == "slow":  # like uvicorn holding a long request: SIGTERM does not end it
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ThreadingHTTPServer((ARGS.host, ARGS.port), Handler).serve_forever()


if __name__ == "__main__":
    main()

"""Sequence-level distillation data against a live, minimal OpenAI-compatible server: retries,
rate limits, authentication, and resuming after the generating process is killed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from helpers import cli_env, cli_here, read_jsonl

PROMPTS = [f"Question {i}?" for i in range(8)]


class Teacher(BaseHTTPRequestHandler):
    """/v1/chat/completions: replies 'Answer to <last user message>'. The first request about each
    prompt fails (503, or 429 with Retry-After), so every answer needs a retry."""

    seen: dict = {}
    delay = 0.0
    key = None

    def do_POST(self):
        if self.path != "/v1/chat/completions":
            return self._send(404, {"error": {"message": "not found"}})
        if self.key and self.headers.get("Authorization") != f"Bearer {self.key}":
            return self._send(401, {"error": {"message": "bad key"}})
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        question = body["messages"][-1]["content"]
        if question == "bad request":
            return self._send(400, {"error": {"message": "no such thing"}})
        n = self.seen[question] = self.seen.get(question, 0) + 1
        if n == 1:
            return self._send(429 if len(question) % 2 else 503, {"error": {"message": "busy"}}, {"Retry-After": "0"})
        time.sleep(self.delay)
        self._send(
            200,
            {
                "object": "chat.completion",
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": f"Answer to {question}"},
                        "finish_reason": "stop",
                    }
                ],
            },
        )

    def _send(self, status, payload, headers=None):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    Teacher.seen, Teacher.delay, Teacher.key = {}, 0.0, None
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Teacher)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


@pytest.fixture()
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return path


def test_every_prompt_answered_through_retries(tmp_path, server, prompts_file):
    from tunesmith.eval.endpoint import ChatEndpoint
    from tunesmith.teacher_replies import generate_replies

    teacher = ChatEndpoint(server, "frontier-1")
    result = generate_replies(teacher, prompts_file, tmp_path / "out.jsonl")
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert [r["prompt"] for r in rows] == PROMPTS
    assert all(r["completion"] == f"Answer to {r['prompt']}" for r in rows)
    assert result == {
        "prompts": 8,
        "answered": 8,
        "empty_replies": 0,
        "already_answered": 0,
        "out": str(tmp_path / "out.jsonl"),
    }
    assert all(n == 2 for n in Teacher.seen.values())  # each failed once (429 or 503), then succeeded


def test_rate_limit_spaces_requests(tmp_path, server, prompts_file):
    from tunesmith.eval.endpoint import ChatEndpoint
    from tunesmith.teacher_replies import generate_replies

    Teacher.seen = {p: 1 for p in PROMPTS}  # no failures: every request is one answer
    start = time.monotonic()
    generate_replies(ChatEndpoint(server, "m", rpm=600), prompts_file, tmp_path / "out.jsonl", limit=4)
    assert time.monotonic() - start >= 3 * 0.1 * 0.9  # 600 a minute: 0.1 s apart


def test_api_key_and_errors(tmp_path, server, prompts_file, monkeypatch):
    Teacher.key = "sekrit"
    args = [
        "distill",
        "generate",
        "--teacher",
        server,
        "--teacher-model",
        "m",
        "--prompts",
        str(prompts_file),
        "--out",
        str(tmp_path / "out.jsonl"),
        "--limit",
        "2",
    ]
    unset = cli_here(args + ["--api-key-env", "TEACHER_KEY"], tmp_path)
    assert unset.returncode == 2 and "--api-key-env TEACHER_KEY: that environment variable is not set" in unset.stderr
    wrong = cli_here(args + ["--api-key-env", "TEACHER_KEY"], tmp_path, env_extra={"TEACHER_KEY": "nope"})
    assert wrong.returncode == 2 and "HTTP 401" in wrong.stderr
    ok = cli_here(args + ["--api-key-env", "TEACHER_KEY"], tmp_path, env_extra={"TEACHER_KEY": "sekrit"})
    assert ok.returncode == 0, ok.stderr
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 2
    Teacher.key = None
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "bad request"}\n')
    refused = cli_here(
        [
            "distill",
            "generate",
            "--teacher",
            server,
            "--teacher-model",
            "m",
            "--prompts",
            str(bad),
            "--out",
            str(tmp_path / "o2.jsonl"),
        ],
        tmp_path,
    )
    assert refused.returncode == 2 and "HTTP 400" in refused.stderr  # not retried: the request itself is wrong


def test_killed_run_resumes_without_losing_or_repeating_answers(tmp_path, server, prompts_file):
    Teacher.delay = 0.3
    out = tmp_path / "out.jsonl"
    args = [
        sys.executable,
        "-m",
        "tunesmith",
        "distill",
        "generate",
        "--teacher",
        server,
        "--teacher-model",
        "m",
        "--prompts",
        str(prompts_file),
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(tmp_path), cwd=tmp_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.is_file() or len(out.read_text().splitlines()) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = read_jsonl(out)
    assert 3 <= len(before) < len(PROMPTS)
    Teacher.delay = 0.0
    again = cli_here(
        [
            "distill",
            "generate",
            "--teacher",
            server,
            "--teacher-model",
            "m",
            "--prompts",
            str(prompts_file),
            "--out",
            str(out),
        ],
        tmp_path,
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["already_answered"] == len(before)
    rows = read_jsonl(out)
    assert sorted(r["prompt"] for r in rows) == sorted(PROMPTS)  # each prompt answered exactly once
    assert rows[: len(before)] == before


def test_local_teacher_and_the_student_trains_on_its_replies(tmp_path, tiny_model_dir, prompts_file):
    from helpers import write_config

    from tunesmith.config import load_config
    from tunesmith.run import train

    result = cli_here(
        [
            "distill",
            "generate",
            "--teacher",
            str(tiny_model_dir),
            "--prompts",
            str(prompts_file),
            "--out",
            str(tmp_path / "replies.jsonl"),
            "--max-tokens",
            "12",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    rows = read_jsonl(tmp_path / "replies.jsonl")
    assert len(rows) == summary["answered"] and summary["answered"] + summary["empty_replies"] == 8
    cfg = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        {"train": tmp_path / "replies.jsonl", "val": tmp_path / "replies.jsonl"},
        tmp_path / "runs",
        train={"max_steps": 3},
    )
    assert train(load_config(cfg), quiet=True)["steps"] == 3

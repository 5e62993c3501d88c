"""The labelling page: records per judgement, durable appends, resume; and the whole round trip
in headless Chromium (Debian's package, driven by Playwright) against a live `tunesmith label`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
from helpers import cli_env, read_jsonl

from tunesmith.data.records import load_source
from tunesmith.label.session import LabelSession, Pair, preference_records

PROMPTS = ["What is the capital of France?", "Name a colour.", "Count to three.", "Say hello."]


@pytest.fixture()
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return path


def test_each_judgement_becomes_the_records_that_train():
    pair = Pair(0, [{"role": "user", "content": "q"}], "reply a", "reply b")
    assert preference_records(pair, "a", None) == [
        {"prompt": "q", "chosen": "reply a", "rejected": "reply b", "judgement": "a"}
    ]
    assert preference_records(pair, "b", "better") == [
        {"prompt": "q", "chosen": "better", "rejected": "reply a", "judgement": "b", "original": "reply b"}
    ]
    assert preference_records(pair, "tie", None) == [{"prompt": "q", "judgement": "tie"}]
    assert [r["rejected"] for r in preference_records(pair, "both_bad", "good")] == ["reply a", "reply b"]


def test_session_appends_durably_and_resumes(tmp_path, tiny_model_dir, prompts_file):
    from tunesmith.model.load import load_for_inference

    model, tok = load_for_inference(str(tiny_model_dir))
    out = tmp_path / "prefs.jsonl"
    session = LabelSession(model, tok, prompts_file, out, "tiny", max_new_tokens=8)
    first = session.next_pair()
    assert session.next_pair() is first  # the pair on show stays until judged
    session.judge(first.id, "a")
    second = session.next_pair()
    session.judge(second.id, "tie")
    assert [r["judgement"] for r in read_jsonl(out)] == ["a", "tie"]
    # a new session on the same file (the server restarted) skips what was judged, tie included
    again = LabelSession(model, tok, prompts_file, out, "tiny", max_new_tokens=8)
    assert again.progress() == {"judged": 2, "total": 4}
    assert again.next_pair().prompt[0]["content"] == PROMPTS[2]
    from tunesmith.errors import UserError

    with pytest.raises(UserError, match="not the one on show"):
        again.judge(first.id, "a")
    with pytest.raises(UserError, match="choice 'maybe'"):
        again.judge(again.next_pair().id, "maybe")
    # the file trains as it is: the tie is left out, counted
    loaded = load_source(str(out))
    assert len(loaded.examples) == 1 and loaded.unpreferred == 1 and loaded.examples[0].rejected is not None


def test_an_output_file_of_something_else_is_refused(tmp_path, tiny_model_dir, prompts_file):
    from tunesmith.errors import UserError
    from tunesmith.model.load import load_for_inference

    out = tmp_path / "other.jsonl"
    out.write_text('{"text": "not a preference"}\n')
    model, tok = load_for_inference(str(tiny_model_dir))
    with pytest.raises(UserError, match="other.jsonl:1: not a record written by tunesmith label"):
        LabelSession(model, tok, prompts_file, out, "tiny")


def start_label_server(tmp_path, model, prompts, out) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tunesmith",
            "label",
            "--model",
            str(model),
            "--prompts",
            str(prompts),
            "--out",
            str(out),
            "--port",
            "0",
            "--max-new-tokens",
            "12",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(tmp_path),
        cwd=tmp_path,
    )
    line = proc.stdout.readline()
    if "labelling page: " not in line:
        proc.kill()
        raise AssertionError(f"server did not start: {line!r} {proc.stderr.read()[-2000:]}")
    return proc, line.split("labelling page: ")[1].split()[0]


def test_labelling_round_trip_in_a_real_browser(tmp_path, tiny_model_dir, prompts_file):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("needs Debian's chromium package (apt-get install chromium)")
    playwright = pytest.importorskip("playwright.sync_api")
    out = tmp_path / "prefs.jsonl"
    proc, url = start_label_server(tmp_path, tiny_model_dir, prompts_file, out)
    assert url.startswith("http://127.0.0.1:")  # loopback only
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            page.goto(url)
            page.wait_for_selector("#pair:not([hidden])")
            assert page.inner_text("#prompt").endswith(PROMPTS[0])
            a, b = page.text_content("#reply-a"), page.text_content("#reply-b")
            page.click("#choose-a")
            page.wait_for_function("document.getElementById('progress').textContent.startsWith('1 of 4')")
            [first] = read_jsonl(out)  # on disk as soon as the page says saved
            assert (first["prompt"], first["chosen"], first["rejected"], first["judgement"]) == (PROMPTS[0], a, b, "a")
            assert page.inner_text("#prompt").endswith(PROMPTS[1])
            b2 = page.text_content("#reply-b")
            page.fill("#edit", "Blue.")
            page.keyboard.press("Tab")
            page.click("#choose-b")
            page.wait_for_function("document.getElementById('progress').textContent.startsWith('2 of 4')")
            second = read_jsonl(out)[1]
            assert (second["chosen"], second["original"], second["edited"]) == ("Blue.", b2, True)

            # the server dies without warning: nothing judged is lost, and a restart carries on
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            assert len(read_jsonl(out)) == 2
            proc, url = start_label_server(tmp_path, tiny_model_dir, prompts_file, out)
            page.goto(url)
            page.wait_for_selector("#pair:not([hidden])")
            assert page.inner_text("#progress").startswith("2 of 4")
            assert page.inner_text("#prompt").endswith(PROMPTS[2])
            page.keyboard.press("4")  # both bad, from the keyboard
            page.wait_for_function("document.getElementById('progress').textContent.startsWith('3 of 4')")
            browser.close()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert [r["judgement"] for r in read_jsonl(out)] == ["a", "b", "both_bad"]
    assert os.stat(out).st_size > 0

"""Many sessions on one Model, each driven from its own thread, at the same time.

Every session owns its compute state (backends, scheduler, KV cache, vision encoder), so the
results of concurrent runs must equal the serial runs bit for bit: logits after each prompt and
the generated texts, for text and image chats mixed. One session used from two threads at once
must raise BusyError and change nothing, never crash.

MINICPM_CONCURRENCY_ROUNDS (default 3) sets how many concurrent rounds are compared.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

import minicpm_cpp

N_THREADS = 8
ROUNDS = int(os.environ.get("MINICPM_CONCURRENCY_ROUNDS", "3"))


def _image(w, h, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _jobs():
    """Eight conversations: text only, one image, two images, a follow-up turn."""
    jobs = []
    for k in range(N_THREADS):
        if k % 4 == 0:
            content = f"Tell me about the number {k}."
        elif k % 4 == 1:
            content = [_image(300 + 20 * k, 200, seed=k), "What is in the image?"]
        elif k % 4 == 2:
            content = [_image(200, 260, seed=k), _image(448, 448, seed=k + 100), "Compare the two images."]
        else:
            content = [_image(640, 480, seed=k), "Describe it."]
        jobs.append([{"role": "user", "content": content}])
    return jobs


def _run(model, msgs):
    """A chat of two turns with greedy decoding; returns the logits after each prompt and the texts."""
    s = minicpm_cpp.Session(model, n_ctx=2048, seed=1, n_threads=1)
    out = []
    for turn in range(2):
        s.chat_prompt(msgs)   # encodes the images (cached for the chat below)
        answer = s.chat(msgs, max_tokens=6, temperature=0)
        # Logits of the last prompt position: evaluate the prompt again, then read them.
        s._s.sync_segments(s.chat_prompt(msgs)["segments"])
        out.append((s.logits(), answer))
        msgs = msgs + [{"role": "assistant", "content": answer}, {"role": "user", "content": f"And then {turn}?"}]
    return out


@pytest.fixture(scope="module")
def model(tiny_minicpmv45_vision_dir, converted):
    return minicpm_cpp.Model(converted(tiny_minicpmv45_vision_dir, "f32"), device="cpu", n_threads=1)


@pytest.fixture(scope="module")
def serial(model):
    return [_run(model, msgs) for msgs in _jobs()]


def _same(a, b):
    return all(np.array_equal(la, lb) and ta == tb for (la, ta), (lb, tb) in zip(a, b))


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_concurrent_sessions_equal_serial_runs(model, serial, round_):
    jobs = _jobs()
    results = [None] * len(jobs)
    errors = []
    start = threading.Barrier(len(jobs))

    def work(k):
        try:
            start.wait()
            results[k] = _run(model, jobs[k])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append((k, repr(e)))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for k in range(len(jobs)):
        for turn, ((lc, tc), (ls, ts)) in enumerate(zip(results[k], serial[k])):
            assert np.isfinite(lc).all(), f"job {k} turn {turn}: non-finite logits"
            assert np.array_equal(lc, ls), f"job {k} turn {turn}: logits differ from the serial run"
            assert tc == ts, f"job {k} turn {turn}: {tc!r} != {ts!r}"


def test_serial_results_are_reproducible(model, serial):
    assert _same(_run(model, _jobs()[1]), serial[1])


def test_one_session_from_two_threads_is_busy(model):
    """While a session computes (inside its eval callback), a second thread calling it gets
    BusyError; the session is unchanged and usable afterwards."""
    seen = {}
    s = None

    def intruder():
        try:
            s.prefill(tokens=[1, 2, 3])
            seen["result"] = "no error"
        except minicpm_cpp.BusyError as e:
            seen["result"] = str(e)
        except BaseException as e:  # noqa: BLE001
            seen["result"] = repr(e)

    def on_tensor(name, array):
        if "result" not in seen and name == "llm:result_output":
            t = threading.Thread(target=intruder)
            t.start()
            t.join()

    s = minicpm_cpp.Session(model, n_ctx=256, eval_callback=on_tensor, eval_filter="result_output")
    ids = model.tokenize("<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n")
    s.prefill(tokens=ids)
    assert "busy" in seen["result"], seen
    assert s.n_past == len(ids)
    plain = minicpm_cpp.Session(model, n_ctx=256)
    plain.prefill(tokens=ids)
    assert np.array_equal(s.logits(), plain.logits())


def test_model_encode_image_from_threads(model):
    """Model.encode_image serialises calls on its own encoder: safe from any thread."""
    img = _image(300, 200, seed=5)
    want = model.encode_image(img).embeddings()
    got = [None] * 4

    def work(k):
        got[k] = model.encode_image(img).embeddings()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(g, want) for g in got)

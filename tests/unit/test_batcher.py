"""The dynamic batcher (src/serve/batcher.py) with a stand-in model: how it forms forward passes from
concurrent one-image requests."""
import threading
import time

import numpy as np

from src.serve.batcher import Batcher


class SlowModel:
    """Reads a batch in a fixed time, as a forward pass whose cost hardly depends on the batch size."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def read(self, images):
        time.sleep(self.seconds)
        return [(f"{int(image.flat[0])}", 1.0) for image in images]


def closed_loop_clients(batcher: Batcher, model, clients: int, requests: int, think_s: float):
    """``clients`` threads, each sending ``requests`` one-image requests, the next ``think_s`` after its answer."""
    answers = []

    def client(number: int):
        for i in range(requests):
            image = np.full((1, 2, 2), number * 1000 + i, np.float32)
            future, = batcher.submit(model, [image])
            answers.append((future.result(timeout=30)[0], str(number * 1000 + i)))
            time.sleep(think_s)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def test_clients_waiting_for_answers_share_full_passes_instead_of_taking_turns():
    """8 clients that each wait for their answer: while one pass runs, the clients just answered come back.
    The batcher waits for them (they were in the server a moment ago) rather than splitting into cohorts."""
    batcher = Batcher(max_batch=32, max_wait_ms=60)
    model = SlowModel(0.05)
    try:
        answers = closed_loop_clients(batcher, model, clients=8, requests=12, think_s=0.003)
        stats = batcher.stats()
    finally:
        batcher.close()
    assert all(text == want for text, want in answers) and len(answers) == 96
    assert stats["images"] == 96
    full = stats["batch_sizes"].get("8", 0)
    assert full * 8 >= 0.75 * 96, stats["batch_sizes"]          # most images are read in passes of all 8


def test_a_lone_request_is_read_at_once():
    batcher = Batcher(max_batch=32, max_wait_ms=500)
    model = SlowModel(0.0)
    try:
        start = time.monotonic()
        future, = batcher.submit(model, [np.zeros((1, 2, 2), np.float32)])
        future.result(timeout=10)
        waited = time.monotonic() - start
    finally:
        batcher.close()
    assert waited < 0.25, waited           # far below --max_wait_ms: nothing else was in the server

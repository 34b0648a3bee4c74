import multiprocessing
import os
import signal
import subprocess
import sys
import time

from collab_utils.cache import Entry, GenerationCache, request_key


def test_key_depends_on_every_part():
    msgs = [{"role": "user", "content": "hi"}]
    params = {"max_new_tokens": 8, "temperature": 0.8, "top_p": 1.0}
    base = request_key("hf:m", msgs, params, 1)
    assert base == request_key("hf:m", [dict(m) for m in msgs], dict(params), 1)
    assert base != request_key("hf:m+adapter", msgs, params, 1)
    assert base != request_key("hf:m", [{"role": "user", "content": "hi!"}], params, 1)
    assert base != request_key("hf:m", msgs, {**params, "temperature": 0.7}, 1)
    assert base != request_key("hf:m", msgs, params, 2)


def test_round_trip_and_counters(cache):
    cache.put_many({"a": Entry("x", 3, 4), "b": Entry("y", 5, 6)})
    found = cache.get_many(["a", "b", "c"])
    assert found == {"a": Entry("x", 3, 4), "b": Entry("y", 5, 6)}
    assert (cache.hits, cache.misses, cache.writes, len(cache)) == (2, 1, 2, 2)
    assert cache.integrity_ok()


def _writer(path, worker, n):
    cache = GenerationCache(path)
    for i in range(n):
        cache.put_many({f"{worker}-{i}": Entry(f"text {worker} {i}", i, i)})


def test_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "c.sqlite"
    GenerationCache(path)
    spawn = multiprocessing.get_context("spawn")  # fresh processes, as papermill kernels are
    procs = [spawn.Process(target=_writer, args=(path, w, 150)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    cache = GenerationCache(path)
    assert len(cache) == 600
    assert cache.get_many(["3-149"])["3-149"].text == "text 3 149"


KILLED_WRITER = """
import sys
from collab_utils.cache import Entry, GenerationCache
cache = GenerationCache(sys.argv[1])
i = 0
while True:
    batch = {f"k{i}-{j}": Entry("v" * 2000 + f"{i}-{j}", i, j) for j in range(50)}
    cache.put_many(batch)
    print(i, flush=True)
    i += 1
"""


def test_process_killed_mid_write_leaves_completed_entries(tmp_path):
    path = tmp_path / "killed.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    done = []
    deadline = time.monotonic() + 60
    while len(done) < 20 and time.monotonic() < deadline:
        done.append(int(proc.stdout.readline()))
    time.sleep(0.05)  # let it be inside a later transaction
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(done) >= 20
    cache = GenerationCache(path)
    assert cache.integrity_ok()
    keys = [f"k{i}-{j}" for i in done for j in range(50)]
    found = cache.get_many(keys)
    assert len(found) == len(keys)
    assert found["k7-3"].text.endswith("7-3")
    assert len(cache) % 50 == 0  # whole transactions only

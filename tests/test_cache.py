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


# --- damage, checksums, check and repair (issue 18)

OLD_SCHEMA = """
CREATE TABLE generations (
    key TEXT PRIMARY KEY,
    text TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    created REAL NOT NULL DEFAULT (julianday('now'))
)
"""


def _filled(path, n=300):
    cache = GenerationCache(path)
    cache.put_many({f"k{i}": Entry(f"text {i} " + "x" * 500, i, 2 * i) for i in range(n)})
    cache.close()
    return path


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "collab_utils", "cache", *map(str, args)],
        capture_output=True,
        text=True,
    )


def test_a_file_written_before_checksums_is_migrated_and_stays_readable(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute(OLD_SCHEMA)
    db.execute(
        "INSERT INTO generations (key, text, prompt_tokens, completion_tokens) "
        "VALUES ('a', 'old text', 1, 2)"
    )
    db.commit()
    db.close()
    cache = GenerationCache(path)
    assert cache.get_many(["a"]) == {"a": Entry("old text", 1, 2)}
    cache.put_many({"b": Entry("new", 3, 4)})
    assert cache.get_many(["a", "b"])["b"] == Entry("new", 3, 4)
    assert cache.corrupt == 0


def test_one_altered_byte_in_a_stored_text_is_not_served(tmp_path):
    import sqlite3

    import pytest

    path = _filled(tmp_path / "c.sqlite", 3)
    db = sqlite3.connect(path)
    db.execute(
        "UPDATE generations SET text = 'text 1 ' || substr(text, 8, 10) || 'y' WHERE key = 'k1'"
    )
    db.commit()
    db.close()
    cache = GenerationCache(path)
    with pytest.warns(UserWarning, match="failed their checksum"):
        found = cache.get_many(["k0", "k1", "k2"])
    assert set(found) == {"k0", "k2"} and cache.corrupt == 1 and cache.misses == 1
    cache.put_many({"k1": Entry("regenerated", 1, 2)})  # the rerun replaces the row
    assert cache.get_many(["k1"]) == {"k1": Entry("regenerated", 1, 2)}


def test_a_damaged_file_names_itself_and_the_way_out(tmp_path):
    import pytest

    from collab_utils.cache import CacheError

    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(os.urandom(8192))
    with pytest.raises(CacheError, match=r"garbage.sqlite.*damaged.*cache repair"):
        GenerationCache(garbage)
    truncated = _filled(tmp_path / "trunc.sqlite")
    size = truncated.stat().st_size
    with open(truncated, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(CacheError, match=r"trunc.sqlite.*cache check"):
        cache = GenerationCache(truncated)
        cache.get_many([f"k{i}" for i in range(300)])
        len(cache)
    with pytest.raises(CacheError, match="is a directory"):
        GenerationCache(tmp_path)


def test_cache_check_and_repair_keep_every_readable_row(tmp_path):
    import sqlite3

    path = _filled(tmp_path / "c.sqlite")
    result = _cli("check", path)
    assert (
        result.returncode == 0 and "ok" in result.stdout and "readable rows: 300" in result.stdout
    )
    db = sqlite3.connect(path)  # one altered text
    db.execute("UPDATE generations SET text = 'forged' WHERE key = 'k5'")
    db.commit()
    db.close()
    with open(path, "r+b") as f:  # and a page in the middle overwritten
        f.seek(4096 * 20)
        f.write(b"\xff" * 4096)
    result = _cli("check", path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "DAMAGED" in result.stdout and "cache repair" in result.stdout
    result = _cli("repair", path)
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.glob("c.sqlite.damaged-*")), "the damaged file is kept aside"
    cache = GenerationCache(path)
    assert cache.integrity_ok()
    found = cache.get_many([f"k{i}" for i in range(300)])
    assert "k5" not in found and 200 < len(found) < 300
    assert all(entry.text.startswith(f"text {key[1:]} ") for key, entry in found.items())
    assert _cli("check", path).returncode == 0


def test_cache_cli_on_garbage_names_the_file(tmp_path):
    garbage = tmp_path / "g.sqlite"
    garbage.write_bytes(b"not a database at all" * 100)
    result = _cli("check", garbage)
    assert result.returncode == 1 and "g.sqlite: DAMAGED" in result.stdout
    assert "Traceback" not in result.stderr
    result = _cli("repair", garbage)
    assert result.returncode == 0 and "kept 0 rows" in result.stdout
    assert len(GenerationCache(garbage)) == 0
    missing = _cli("check", tmp_path / "nothere.sqlite")
    assert missing.returncode == 2 and "no such cache file" in missing.stderr

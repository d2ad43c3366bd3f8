"""The kernels' compiled-code cache is stamped with every kernel source, so a change to one
file recompiles the kernels of another that call or inline it."""
from __future__ import annotations

import os

from kernels import compile_cache
from kernels.scenario_index import _put
from kernels.seen_ids import find_slot


def _tree(root, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)


def test_the_digest_follows_every_source_and_nothing_else(tmp_path):
    _tree(tmp_path, {"a.py": b"x = 1\n", "sub/b.py": b"y = 2\n", "notes.txt": b"n"})
    before = compile_cache.sources_digest(str(tmp_path))
    _tree(tmp_path, {"__pycache__/a.nbi": b"cached", "sub/__pycache__/b.py": b"z = 0\n", "notes.txt": b"m"})
    assert compile_cache.sources_digest(str(tmp_path)) == before  # caches and other files: no change
    _tree(tmp_path, {"sub/b.py": b"y = 3\n"})  # a change in a file other kernels import
    changed = compile_cache.sources_digest(str(tmp_path))
    assert changed != before
    _tree(tmp_path, {"sub/b.py": b"y = 2\n", "c.py": b""})  # a new, empty file
    assert compile_cache.sources_digest(str(tmp_path)) not in (before, changed)


def test_each_kernel_s_cache_entry_is_stamped_with_all_kernel_sources():
    for kernel in (find_slot, _put):  # one in the file changed, one that inlines it from another
        assert kernel._cache._impl.locator.get_source_stamp() == compile_cache.sources_digest()

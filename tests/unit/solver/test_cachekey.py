"""Cache keys: deterministic, and sensitive to exactly the things they are made of."""

from __future__ import annotations

from lazybuild.solver import DepKey, cache_key

OP = "sha256:" + "0" * 64
INPUT = DepKey("", "sha256:" + "a" * 64)
COPY_SOURCE = DepKey("/app.c", "sha256:" + "b" * 64, content=True)


def test_keys_are_stable_across_runs_and_versions() -> None:
    # Golden, computed outside Python (printf of the document below | sha256sum):
    # changing the recipe must be deliberate (bump KEY_VERSION), since every existing
    # cache entry stops matching.
    #   {"inputs":[{"content":false,"digest":"sha256:a…","selector":""},
    #   {"content":true,"digest":"sha256:b…","selector":"/app.c"}],"op":"sha256:0…",
    #   "output":0,"version":1}
    assert cache_key(OP, 0, [INPUT, COPY_SOURCE]) == (
        "sha256:389a05042bf23b2a0bcf67cf30ef75f710fdcdd580575f6b4cbc551d2ef89ab7"
    )


def test_every_ingredient_changes_the_key() -> None:
    base = cache_key(OP, 0, [INPUT, COPY_SOURCE])
    variants = [
        cache_key("sha256:" + "9" * 64, 0, [INPUT, COPY_SOURCE]),
        cache_key(OP, 1, [INPUT, COPY_SOURCE]),
        cache_key(OP, 0, [COPY_SOURCE, INPUT]),
        cache_key(OP, 0, [INPUT]),
        cache_key(OP, 0, [INPUT, DepKey("/other.c", COPY_SOURCE.digest, content=True)]),
        cache_key(OP, 0, [INPUT, DepKey("/app.c", COPY_SOURCE.digest, content=False)]),
        cache_key(OP, 0, [INPUT, DepKey("/app.c", "sha256:" + "c" * 64, content=True)]),
    ]
    assert base not in variants
    assert len(set(variants)) == len(variants)


def test_keys_are_sha256_digests() -> None:
    key = cache_key(OP, 0, [])
    assert key.startswith("sha256:") and len(key) == 71
    assert key == cache_key(OP, 0, [])

"""API keys: a server with no keys configured is open; with keys, only `Bearer <one of them>` passes,
and the replicas hold digests, never the keys."""

from __future__ import annotations

from lmforge.serve.auth import authorized, digest, load_keys


def test_no_keys_configured_serves_without_auth():
    assert authorized(None, []) and authorized("Bearer anything", [])


def test_only_a_configured_bearer_key_passes():
    digests = [digest("sk-one"), digest("sk-two")]
    assert authorized("Bearer sk-two", digests) and authorized("bearer  sk-one ", digests)
    for header in (None, "", "Bearer", "Bearer ", "Basic sk-one", "sk-one", "Bearer sk-three", "Bearer sk-on"):
        assert not authorized(header, digests), header
    assert "sk-one" not in "".join(digests)


def test_keys_from_config_env_and_file(tmp_path, monkeypatch):
    monkeypatch.setenv("KEYS", "k2, k3,")
    file = tmp_path / "keys"
    file.write_text("# ops keys\nk4\n\nk1\n")
    assert load_keys(["k1"], "KEYS", str(file)) == ["k1", "k2", "k3", "k4"]
    assert load_keys([], "UNSET_KEYS_VAR", None) == []

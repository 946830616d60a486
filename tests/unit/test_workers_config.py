"""`workers` (docs/workers.md): auto, a count, the flag and the environment; and each worker's
share of the caps, which together never exceed the configured ones."""

from __future__ import annotations

import os

import pytest

from greyproxy.config import MAX_AUTO_WORKERS, ConfigError, LimitsConfig, load_config, share_of


def cores() -> int:
    return len(os.sched_getaffinity(0))


def test_auto_is_the_cores_capped(tmp_path):
    cfg = load_config(None, env={"GREYPROXY_DATA_HOME": str(tmp_path)})
    assert cfg.workers == max(1, min(cores(), MAX_AUTO_WORKERS))


@pytest.mark.parametrize(("flag", "env", "expected"), [("3", None, 3), (None, "2", 2), ("1", "4", 1), ("AUTO", None, None)])
def test_flag_beats_env_beats_file(tmp_path, flag, env, expected):
    environ = {"GREYPROXY_DATA_HOME": str(tmp_path), **({"GREYPROXY_WORKERS": env} if env else {})}
    cfg = load_config(None, env=environ, flags={"workers": flag})
    assert cfg.workers == (expected or max(1, min(cores(), MAX_AUTO_WORKERS)))


@pytest.mark.parametrize("bad", ["0", "65", "two", "-1", "1.5"])
def test_bad_counts_name_the_key(tmp_path, bad):
    with pytest.raises(ConfigError, match="workers"):
        load_config(None, env={"GREYPROXY_DATA_HOME": str(tmp_path)}, flags={"workers": bad})


def test_bool_is_not_a_count(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("workers: true\n")
    with pytest.raises(ConfigError, match="workers"):
        load_config(str(path), env={"GREYPROXY_DATA_HOME": str(tmp_path)})


@pytest.mark.parametrize("n", [1, 2, 3, 8])
def test_shares_never_add_up_to_more_than_the_caps(n):
    caps = LimitsConfig(connections_per_address=1000, connections_total=10000, held_per_container=5,
                        held_total=7, requests_per_second=200.0, requests_burst=3)
    share = share_of(caps, n)
    for key in ("connections_per_address", "connections_total", "held_per_container", "held_total",
                "requests_burst"):
        part, whole = getattr(share, key), getattr(caps, key)
        assert part >= 1
        assert part * n <= whole or part == 1, key
    assert share.requests_per_second * n == pytest.approx(caps.requests_per_second)
    assert (share.head_seconds, share.max_head_bytes) == (caps.head_seconds, caps.max_head_bytes)

"""The fan-out tree model (benchmarks/fanout_model.py) behaves like the tree it describes."""

from __future__ import annotations

import itertools
import math

import pytest

from benchmarks.fanout_model import main, parse_rate, parse_size, simulate

GBIT = 1e9
BLOB = 256 * 2**20


def full_tree_depth(nodes: int, fanout: int) -> int:
    """Levels below the root of a complete ``fanout``-ary tree of ``nodes`` nodes."""
    depth, capacity, level = 0, 1, 1
    while capacity < nodes:
        level *= fanout
        capacity += level
        depth += 1
    return depth


@pytest.mark.parametrize("fanout", [2, 3, 8, 16])
@pytest.mark.parametrize("nodes", [1, 2, 9, 73, 1000, 5000])
def test_depth_is_about_log_fanout_of_nodes(nodes: int, fanout: int) -> None:
    rollout = simulate(nodes, nic_bps=GBIT, fanout=fanout, size=BLOB)
    assert rollout.depth == full_tree_depth(nodes, fanout)
    if nodes > 1:
        assert math.floor(math.log(nodes, fanout)) - 1 <= rollout.depth <= math.ceil(
            math.log(nodes, fanout)
        )


@pytest.mark.parametrize("fanout", [1, 2, 8])
def test_bytes_upstream_once_and_no_node_sends_more_than_fanout_copies(fanout: int) -> None:
    for nodes in (1, 8, 500):
        r = simulate(nodes, nic_bps=GBIT, fanout=fanout, size=BLOB)
        assert r.upstream_bytes == BLOB
        assert r.max_sent_bytes <= fanout * BLOB
        assert r.mean_sent_bytes * nodes == (nodes - 1) * BLOB  # every other node got one copy


def test_one_node_pulls_at_the_link_rate() -> None:
    r = simulate(1, nic_bps=GBIT, fanout=8, size=BLOB, hop_latency=0)
    assert r.seconds == pytest.approx(BLOB / (GBIT / 8))
    slow_upstream = simulate(1, nic_bps=GBIT, fanout=8, size=BLOB, upstream_bps=GBIT / 4,
                             hop_latency=0)  # fmt: skip
    assert slow_upstream.seconds == pytest.approx(4 * r.seconds)


def test_a_full_tree_streams_at_nic_over_fanout() -> None:
    r = simulate(1 + 8 + 64, nic_bps=GBIT, fanout=8, size=BLOB, hop_latency=0)
    assert r.slowest_rate == pytest.approx(GBIT / 8 / 8)
    assert r.seconds == pytest.approx(8 * BLOB / (GBIT / 8))


def test_time_grows_with_nodes_but_only_through_depth() -> None:
    times = [simulate(n, nic_bps=GBIT, fanout=4, size=BLOB).seconds for n in (1, 5, 21, 85, 341)]
    assert times == sorted(times)
    full = [simulate(n, nic_bps=GBIT, fanout=4, size=BLOB) for n in (21, 85, 341, 1365)]
    steps = [b.seconds - a.seconds for a, b in itertools.pairwise(full)]
    assert steps == pytest.approx([2 * 0.002] * 3)  # one more level: one more request + redirect


def test_a_star_costs_a_copy_per_peer() -> None:
    r = simulate(6, nic_bps=GBIT, fanout=8, size=BLOB, hop_latency=0)
    assert r.depth == 1
    assert r.max_sent_bytes == 5 * BLOB
    assert r.seconds == pytest.approx(5 * BLOB / (GBIT / 8))


def test_units_and_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_rate("1gbit") == 1e9
    assert parse_rate("2.5Gbit/s") == 2.5e9
    assert parse_rate("100MB") == 8e8
    assert parse_size("256MiB") == BLOB
    assert parse_size("1GB") == 10**9
    assert parse_size("4096") == 4096
    main(["--nodes", "1,8", "--fanout", "2", "--size", "1MiB"])
    out = capsys.readouterr().out
    assert "| 8 | 2 | 3 |" in out


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        simulate(0, nic_bps=GBIT, fanout=8, size=BLOB)

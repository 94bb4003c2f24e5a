"""Cluster detection: from INFO cluster, or forced by `?cluster=` in the URL (issue 6)."""

from __future__ import annotations

import pytest

from relayctl.core import cluster as clusterlib
from relayctl.core.connection import connect, parse_target, redact_url
from relayctl.core.errors import RedisUnavailableError, UsageError
from tests.conftest import free_port


def test_a_cluster_node_is_detected_and_gets_the_cluster_client(cluster_url):
    client = connect(cluster_url)
    assert clusterlib.is_cluster(client)
    assert [s.slots for s in clusterlib.shards(client)] == ["0-5460", "5461-10922",
                                                           "10923-16383"]
    client.close()


def test_a_standalone_server_keeps_the_plain_client(redis_url):
    client = connect(redis_url)
    assert not clusterlib.is_cluster(client)
    assert [s.name for s in clusterlib.shards(client)] == ["0"]


def test_cluster_no_forces_a_plain_client_to_one_node(cluster_url):
    client = connect(cluster_url + "?cluster=no")
    assert not clusterlib.is_cluster(client)
    client.close()


def test_cluster_yes_against_a_standalone_server_is_one_line_usage_error(redis_url):
    with pytest.raises(UsageError, match="is not a cluster node"):
        connect(redis_url + "?cluster=yes")


@pytest.mark.parametrize("value", ["maybe", "", "2"])
def test_an_unknown_cluster_value_is_refused(value):
    with pytest.raises(UsageError, match="cluster= must be yes, no or auto"):
        parse_target(f"redis://127.0.0.1:6380/0?cluster={value}")


def test_the_cluster_option_is_removed_from_the_url_and_secrets_stay_redacted():
    target = parse_target("redis://user:SECRETPW@127.0.0.1:7000/0?cluster=yes")
    assert target.cluster is True and "cluster" not in target.url
    assert "SECRETPW" not in target.display and "SECRETPW" not in redact_url(target.url)


def test_a_cluster_url_nobody_listens_on_is_unavailable_not_a_traceback():
    with pytest.raises(RedisUnavailableError, match="cannot reach"):
        connect(f"redis://127.0.0.1:{free_port()}/0?cluster=yes", connect_timeout=0.5)

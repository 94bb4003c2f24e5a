from __future__ import annotations

import pytest

from relayctl.core.config import load_config
from relayctl.core.errors import UsageError
from relayctl.core.keys import KeySchema


def test_config_reads_hash_tagged_templates_labels_and_thresholds(tmp_path):
    path = tmp_path / "relay.toml"
    path.write_text(
        '[keys]\nnew_job = "ai:job:{<ws>}:<job_id>"\nindex = "ai:jobidx:{<ws>}"\n'
        '[workspaces]\nlabelled = ["acme", "globex"]\n'
        '[thresholds]\nnew_read_share = 0.8\n'
    )
    cfg = load_config(path)
    assert cfg.schema.new_key("acme", "j1") == "ai:job:{acme}:j1"
    assert cfg.schema.index_key("acme") == "ai:jobidx:{acme}"
    assert cfg.schema.old_key("j1") == "ai:jobs:j1"
    assert cfg.labelled_workspaces == ("acme", "globex")
    assert cfg.thresholds == {"new_read_share": 0.8}


@pytest.mark.parametrize("body, needle", [
    ("[keys\n", "not valid TOML"),
    ('[keys]\nnew_job = "ai:job:<job_id>"\n', "<ws>"),
    ('[keys]\nold_job = "ai:jobs:*:<job_id>"\n', "glob"),
    ('[keys]\nbogus = "x"\n', "[keys] accepts only"),
    ('[workspaces]\nlabelled = ["Bad*WS"]\n', "invalid workspace id"),
    ('[thresholds]\nx = "high"\n', "numbers"),
    ('[surprise]\n', "unknown section"),
])
def test_bad_config_is_a_one_line_usage_error(tmp_path, body, needle):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(UsageError) as info:
        load_config(path)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_config_file_is_named_in_the_error(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_default_schema_matches_spec_key_layout():
    s = KeySchema()
    assert (s.old_key("j"), s.new_key("w", "j"), s.index_key("w")) == (
        "ai:jobs:j", "ai:job:w:j", "ai:jobidx:w")
    assert s.old_pattern == "ai:jobs:*" and s.new_pattern == "ai:job:*:*"
    assert s.idempotency_key("w", "r") == "ai:idempotency:w:r"

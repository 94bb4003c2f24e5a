"""Identifier rules (SPEC §1): checked against an independent oracle, not the module's regex."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jobstore_kit import ADVERSARIAL, WS_CHARS, oracle_job, oracle_ws

from relayctl.core.errors import ValidationError
from relayctl.core.validate import (
    is_valid_job_id,
    is_valid_workspace_id,
    validate_job_id,
    validate_request_id,
    validate_workspace_id,
)


@pytest.mark.parametrize("bad", ADVERSARIAL, ids=repr)
def test_adversarial_workspace_ids_are_rejected_with_a_clear_message(bad):
    with pytest.raises(ValidationError, match="invalid workspace id"):
        validate_workspace_id(bad)
    assert not is_valid_workspace_id(bad)


@pytest.mark.parametrize("good", [
    "a", "0", "ws-a", "ws_b", "a" * 64, "3f2504e0-4f89-11d3-9a0c-0305e82c3301",
])
def test_valid_workspace_ids_are_returned_unchanged(good):
    assert validate_workspace_id(good) == good


@pytest.mark.parametrize("bad", [None, 1, b"ws", ["ws"]], ids=repr)
def test_non_string_identifiers_are_rejected(bad):
    for check in (validate_workspace_id, validate_job_id, validate_request_id):
        with pytest.raises(ValidationError):
            check(bad)


def test_job_ids_may_hold_a_dot_but_workspaces_may_not():
    assert validate_job_id("job.1") == "job.1"
    with pytest.raises(ValidationError):
        validate_workspace_id("job.1")
    with pytest.raises(ValidationError):
        validate_job_id(".job")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=70)
       | st.text(alphabet=WS_CHARS + ".:*?[]{}A\n", max_size=70))
def test_workspace_and_job_validation_match_the_documented_rule(value):
    assert is_valid_workspace_id(value) is oracle_ws(value)
    assert is_valid_job_id(value) is oracle_job(value)
    if oracle_ws(value):
        assert validate_workspace_id(value) == value
    else:
        with pytest.raises(ValidationError):
            validate_workspace_id(value)


def test_request_ids_allow_upper_case_but_no_glob_or_separator():
    assert validate_request_id("Req-1.A_b") == "Req-1.A_b"
    for bad in ("", "req*", "req:1", "req 1", "r" * 129, "r\u00e9q"):
        with pytest.raises(ValidationError):
            validate_request_id(bad)

"""Gates over the stored verify: `verify_fresh` (archive delete's precondition) and
`index_orphans`. Registered into relayctl.core.gates.GATES when this module is imported."""

from __future__ import annotations

from relayctl.core.gates import FAIL, PASS, UNKNOWN, WAIT, GateContext, GateResult, _r, gate
from relayctl.core.scrape import SourceError
from relayctl.core.verify import VERIFY_MAX_AGE_S, fresh_verify, last_verify


@gate("verify_fresh", "Fresh clean full verify after the last flag change")
def verify_fresh(ctx: GateContext) -> GateResult:
    max_age = ctx.thresholds.get("verify_max_age", VERIFY_MAX_AGE_S)
    threshold = f"full verify, clean, after the last flag change, < {max_age / 60:.0f} min old"
    try:
        fresh = ctx.redis_call(
            "verify_fresh", lambda c: fresh_verify(c, max_age_s=max_age, now=ctx.now,
                                                   audit_scan=ctx.audit_scan))
    except SourceError as exc:
        return _r("verify_fresh", UNKNOWN, "-", threshold, str(exc))
    ok, why = fresh
    if ok:
        return _r("verify_fresh", PASS, "fresh", threshold, why)
    v = ctx.redis_call("verify", last_verify)
    if v is not None and v["mode"] == "full" and not v["clean"]:
        return _r("verify_fresh", FAIL, "differences", threshold, why)
    return _r("verify_fresh", WAIT, "stale" if v else "no verify", threshold, why)


@gate("index_orphans", "No index entries of jobs that no longer exist")
def index_orphans(ctx: GateContext) -> GateResult:
    threshold = "index_orphan == 0 in the latest full verify"
    try:
        v = ctx.redis_call("verify", last_verify)
    except SourceError as exc:
        return _r("index_orphans", UNKNOWN, "-", threshold, str(exc))
    if v is None or v["mode"] != "full" or "index_orphan" not in v["counts"]:
        return _r("index_orphans", WAIT, "no verify", threshold,
                  "run `relayctl verify` (a full run counts orphans)")
    if ctx.now() - v["ts"] > ctx.t("max_age_s"):
        return _r("index_orphans", WAIT, "verify too old", threshold, "run `relayctl verify`")
    n = int(v["counts"]["index_orphan"])
    return _r("index_orphans", PASS if n == 0 else FAIL, f"{n} orphans", threshold,
              "" if n == 0 else "`relayctl verify --repair --reason TEXT` removes them")

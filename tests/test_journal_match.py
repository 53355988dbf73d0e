"""The pure matcher of unrecorded creates (Hypothesis): never a duplicate adoption, never
a known id, never a create while a fitting invocation is left over."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kernel_async.journal._match import (
    CLOCK_SKEW,
    Candidate,
    Unrecorded,
    match_unrecorded,
    payload_digest,
)

DIGESTS = st.sampled_from(["a", "b", "c"])
TIMES = st.floats(min_value=0, max_value=300, allow_nan=False)
IDS = st.sampled_from([f"inv{i}" for i in range(15)])

unrecorded_lists = st.lists(
    st.builds(Unrecorded, index=st.integers(0, 30), digest=DIGESTS, since=TIMES),
    max_size=12,
    unique_by=lambda u: u.index,
)
candidate_lists = st.lists(
    st.builds(
        Candidate, id=st.sampled_from([f"inv{i}" for i in range(15)]), digest=DIGESTS, started=TIMES
    ),
    max_size=15,
)


def fits(u: Unrecorded, c: Candidate) -> bool:
    return c.digest == u.digest and c.started >= u.since - CLOCK_SKEW


@given(unrecorded_lists, candidate_lists, st.sets(IDS))
def test_adoptions_are_safe_and_leave_nothing_that_fits(
    unrecorded: list[Unrecorded], candidates: list[Candidate], known: set[str]
) -> None:
    adopted = match_unrecorded(unrecorded, candidates, known)
    by_index = {u.index: u for u in unrecorded}
    first_seen: dict[str, Candidate] = {}
    for c in candidates:
        first_seen.setdefault(c.id, c)
    assert set(adopted) <= set(by_index)
    assert len(set(adopted.values())) == len(adopted)  # one invocation, one index
    assert not set(adopted.values()) & known
    for index, invocation_id in adopted.items():
        assert fits(by_index[index], first_seen[invocation_id])
    left = [c for c in first_seen.values() if c.id not in known and c.id not in adopted.values()]
    for u in unrecorded:  # created again only when nothing that fits is left over
        if u.index not in adopted:
            assert not any(fits(u, c) for c in left)


def test_identical_payloads_pair_in_index_order_oldest_first() -> None:
    d = payload_digest('{"x":1}')
    unrecorded = [Unrecorded(5, d, 100.0), Unrecorded(2, d, 100.0), Unrecorded(7, d, 100.0)]
    candidates = [Candidate("late", d, 102.0), Candidate("early", d, 101.0)]
    assert match_unrecorded(unrecorded, candidates, set()) == {2: "early", 5: "late"}
    assert match_unrecorded(unrecorded, candidates, {"early"}) == {2: "late"}


def test_an_invocation_older_than_the_record_is_not_adopted() -> None:
    d = payload_digest("1")
    old = Candidate("old", d, 1000.0 - CLOCK_SKEW - 1)
    assert match_unrecorded([Unrecorded(0, d, 1000.0)], [old], set()) == {}
    assert payload_digest(None) != payload_digest("null")

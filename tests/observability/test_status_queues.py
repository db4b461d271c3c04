"""What heartbeats can make `leveret status` ask the broker: actor queues of the namespace
only, a bounded number of them, the given actors always first; what is left out counted."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from leveret.actors.actor import MAX_QUEUE_BYTES
from leveret.services.operations.status_queues import (
    MAX_PROBED_QUEUES,
    MAX_QUEUES_PER_HEARTBEAT,
    actor_queue,
    claimed_queues,
    plan,
)


def test_only_actor_queues_of_the_namespace_are_taken_from_heartbeats() -> None:
    assert actor_queue("shop", "shop.billing") == "billing"
    assert actor_queue("shop", "shop.billing.v2") == "billing.v2"
    for name in [
        "other.billing",  # another namespace
        "shopx.billing",
        "shop.billing.dlq",  # not an actor queue
        "shop.delay.3",
        "shop._status.heartbeats",
        "shop.",
        "shop.a b",  # no actor queue can be named so
        "shop.\x1b[2J",
        "shop.a..b",
        "shop." + "x" * (MAX_QUEUE_BYTES + 1),  # longer than an actor's queue can be
    ]:
        assert actor_queue("shop", name) is None, name


def test_one_heartbeat_names_at_most_its_share_and_the_rest_is_counted() -> None:
    """Names past the limit are not even read: counted as past it (a repeat of a kept one
    is not left out)."""
    names = [f"ns.q{n}" for n in range(MAX_QUEUES_PER_HEARTBEAT + 30)]
    claims = claimed_queues("ns", [("w1", ["other.q", "ns.bad name", *names, "ns.q0"])])
    assert claims.by_worker["w1"] == names[:MAX_QUEUES_PER_HEARTBEAT]
    assert claims.left_out.past_limits == 30
    assert claims.left_out.not_actor_queues == 2


def test_workers_take_turns_the_last_heard_from_first() -> None:
    claims = claimed_queues(
        "ns", [("forger", ["ns.f1", "ns.f2", "ns.f3"]), ("real", ["ns.r1", "ns.r2"])]
    )
    assert claims.order == ["r1", "f1", "r2", "f2", "f3"]


def test_the_given_actors_come_first_and_are_never_crowded_out() -> None:
    forged = [(f"w{n}", [f"ns.a{n}_{i}" for i in range(100)]) for n in range(30)]
    claims = claimed_queues("ns", forged)
    given = [f"z{n}" for n in range(MAX_PROBED_QUEUES + 5)]  # more than the bound: all kept
    looked = plan(given=given, listed=[], claims=claims, listing_complete=False, probe_listed=True)
    assert looked.probed[: len(given)] == given
    assert set(given) <= set(looked.known)
    assert len(looked.unverified) == MAX_PROBED_QUEUES
    assert looked.left_out.past_limits == 3000 - MAX_PROBED_QUEUES


def test_with_a_complete_listing_names_it_lacks_are_not_asked_about() -> None:
    claims = claimed_queues("ns", [("real", ["ns.billing"]), ("forger", ["ns.fake"])])
    looked = plan(
        given=["emails"],
        listed=["billing", "emails"],
        claims=claims,
        listing_complete=True,
        probe_listed=False,  # the dashboard: the listing's figures are trusted
    )
    assert looked.known == ["billing", "emails"]
    assert looked.probed == []
    assert looked.left_out.not_on_broker == 1


@settings(max_examples=200, deadline=None)
@given(
    beats=st.lists(
        st.tuples(
            st.text(max_size=3),
            st.lists(
                st.sampled_from(["ns.a", "ns.b", "ns.c.d", "x.a", "ns.a.dlq", "ns.\x00"])
                | st.text(max_size=8).map(lambda t: "ns." + t),
                max_size=MAX_QUEUES_PER_HEARTBEAT + 3,
            ),
        ),
        max_size=5,
    ),
    given_actors=st.lists(st.sampled_from(["a", "b", "given"]), max_size=3),
    listed=st.lists(st.sampled_from(["a", "listed"]), max_size=2),
    complete=st.booleans(),
    probe_listed=st.booleans(),
)
def test_the_bounds_hold_whatever_heartbeats_list(
    beats: list[tuple[str, list[str]]],
    given_actors: list[str],
    listed: list[str],
    complete: bool,
    probe_listed: bool,
) -> None:
    claims = claimed_queues("ns", beats)
    looked = plan(
        given=given_actors,
        listed=listed,
        claims=claims,
        listing_complete=complete,
        probe_listed=probe_listed,
    )
    for queues in claims.by_worker.values():
        assert len(queues) <= MAX_QUEUES_PER_HEARTBEAT
        assert all(actor_queue("ns", queue) for queue in queues)
    assert set(given_actors) <= set(looked.known)
    assert len([q for q in looked.probed if q not in given_actors]) <= MAX_PROBED_QUEUES
    assert looked.unverified <= set(looked.probed)
    if complete:
        assert not looked.unverified

"""When a pass lists a pod-less Job's FailedCreate events: after a grace, then at most every few seconds."""

from __future__ import annotations

from sft_operator.handlers import PodCreateLooks


def test_no_look_in_the_grace_then_one_every_interval():
    looks = PodCreateLooks(grace=2.0, every=5.0)
    assert looks.may_look("ns/a-a1", 100.0) == 2.0  # first seen: the pods may just be on their way
    assert looks.may_look("ns/a-a1", 101.5) == 0.5
    assert looks.may_look("ns/a-a1", 102.0) == 0.0  # the grace is over: look (recorded)
    assert looks.may_look("ns/a-a1", 103.0) == 4.0  # looked 1 s ago: wait for the interval
    assert looks.may_look("ns/a-a1", 107.0) == 0.0
    assert looks.may_look("ns/b-a1", 107.0) == 2.0  # each Job has its own clock


def test_pods_appearing_or_the_sftjob_going_resets_the_clock():
    looks = PodCreateLooks(grace=2.0, every=5.0)
    looks.may_look("ns/a-a1", 100.0)
    assert looks.may_look("ns/a-a1", 102.0) == 0.0
    looks.done("ns/a-a1")  # pods came: a later pod-less spell starts a new grace
    assert looks.may_look("ns/a-a1", 200.0) == 2.0
    looks.may_look("ns/a-a2", 200.0)
    looks.may_look("ns/other-a1", 200.0)
    looks.forget("ns/a-")
    assert looks.may_look("ns/a-a2", 300.0) == 2.0 and looks.may_look("ns/a-a1", 300.0) == 2.0
    assert looks.may_look("ns/other-a1", 300.0) == 0.0  # another SFTJob's clock kept running

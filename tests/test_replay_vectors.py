"""Known-answer tests of the replay cache (``protocol/vectors/replay.json``, SPEC.md section 3.5):
``ReplayGuard``'s defaults, and the scripted ``admit_hello`` sequence outcome by outcome, with the
floors per source and the binders remembered after each step.
"""

from __future__ import annotations

from p2ptls.trust import Admission, ReplayGuard
from tests.vector_files import h, load


def test_replay_guard_defaults() -> None:
    defaults = load("replay.json")["defaults"]
    guard = ReplayGuard()
    assert guard.window_ns == defaults["window_ns"] == 600 * 10**9
    assert guard.max_future_skew_ns == defaults["max_future_skew_ns"] == 60 * 10**9
    assert guard.max_recent_hellos == defaults["max_recent_hellos"] == 65536
    assert guard.max_recent_per_source == defaults["max_recent_per_source"] == 4096


def test_replay_guard_script() -> None:
    script = load("replay.json")["script"]
    guard = ReplayGuard(
        window_s=script["window_ns"] / 1e9,
        max_recent_hellos=script["max_recent_hellos"],
        max_recent_per_source=script["max_recent_per_source"],
    )
    assert guard.window_ns == script["window_ns"]
    sources = {step["source"] for step in script["steps"]}
    for step in script["steps"]:
        binder = h(script["binders"][step["binder"]])
        outcome = guard.admit_hello(binder, step["timestamp_ns"], step["now_ns"], step["source"])
        assert outcome.value == step["outcome"], step
        floors = {source: guard.floor_of(source) for source in sources}
        assert floors == {source: step["floors_after"].get(source, -1) for source in sources}
        if outcome is Admission.NEW:  # remembered: its decryption is kept for its copies
            guard.remember_decryption(binder, step["binder"].encode())
        remembered = {
            name for name in script["binders"] if guard.decryption_of(h(script["binders"][name]))
        }
        assert remembered == {name for name, _ in step["remembered_after"]}, step

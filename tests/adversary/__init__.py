"""An adversarial-member harness, reusable by every p2ptls protocol.

* :mod:`.core` — :class:`Move` (one hostile action), :class:`Budget`, :func:`run_adversary` (a
  seeded, bounded run of moves in concurrent lanes) and :class:`AdversaryRun` (what was played).
* :mod:`.network` — an honest state network to attack and the adversary's member lanes.
* :mod:`.invariants` — the checks: nodes up and answering, own state unchanged and converging,
  tables and memory bounded.
* Move catalogues: :mod:`.state` (every state message type), :mod:`.transport` (handshake and
  record layer), :mod:`.sllp` (datagrams on an established channel).

A new protocol plugs in with a lane factory (its ``conn``), a catalogue of moves and its own
invariant checks; see ``tests/test_adversarial_members.py``.
"""

"""An adversarial-member harness, reusable by every p2ptls protocol.

* :mod:`.core` — :class:`~.core.Move` (one hostile action: a name and ``async play(conn, rng)``),
  :class:`~.core.Budget` (moves, clock seconds, lanes, per-move deadline),
  :func:`~.core.run_adversary` (a seeded, bounded run: each lane plays every move once, then draws
  at random) and :class:`~.core.AdversaryRun` (what was played; ``reported()`` attaches the seed
  to a failure, ``P2PTLS_ADVERSARY_SEED`` replays it).
* :mod:`.network` — an honest state network to attack (each node in its own task, so a node that
  dies is observed, not fatal to the test) and the adversary's member lanes.
* :mod:`.invariants` — the checks: nodes up and answering, own state unchanged and converging,
  tables within their bounds, the heap within a budget across a flood.
* Move catalogues: :mod:`.state` (every state message type), :mod:`.transport` (handshake and
  record layer), :mod:`.sllp` (datagrams on an established channel, with its own arena and
  checks). The state catalogue's ``ATTACK_MOVES`` names the attacks that once broke a node.

To plug a new protocol in (DHT, claims, mesh): write its arena (honest nodes plus an async
context manager ``lane(i)`` that yields what a move gets as ``conn``: typically a genuine member
with connections to a victim), a catalogue of moves (``@move("name") async def ...(conn, rng)``,
every free choice drawn from ``rng``), and its invariant checks; then ``run = await
run_adversary(lane, moves, budget, seed)`` and check under ``with run.reported():``. See
``tests/test_adversarial_members.py``.
"""
